"""The one-shot paths beside sessions: answering one prompt (`run`) and describing a model
with its fit plan (`show`). No memory tiers: plain llama.cpp through the runtime."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from localsym import model_store
from localsym.runtime.bridge import Model
from localsym.runtime.engine import Engine, GenParams, GenStats, RunOptions, make_plan
from localsym.runtime.gguf_file import read_header
from localsym.runtime.model_info import model_info


class OneShot:
    """One prompt's answer, streamed; ``stats`` fill in as it runs. Use it in a ``with``
    block: leaving it frees the model."""

    def __init__(
        self, model: str, prompt: str, opts: RunOptions, params: GenParams, system: str | None = None, raw: bool = False
    ) -> None:
        self.engine = Engine(model_store.resolve(model), opts)
        eng = self.engine
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        # user text is never parsed for control tokens (a prompt that spells <|im_end|>
        # stays text); only the template's own markup is
        if eng.template.present and not raw:
            self.tokens = eng.chat_tokens(messages)
        else:
            self.tokens = eng.tokenize_prompt("") + eng.model.tokenize(prompt)
        self.params = params
        self.stats = GenStats()

    def __iter__(self) -> Iterator[str]:
        return self.engine.generate(self.tokens, 0, self.params, stats=self.stats)

    def cancel(self) -> None:
        self.engine.ctx.cancel()

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> OneShot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def describe_model(model: str, opts: RunOptions) -> dict[str, Any]:
    """A model's shape and the fit plan for ``opts`` (an explicit ``--vram`` is planned for
    even on a CPU build: what `show` tells about the laptop the user asks about)."""
    path = model_store.resolve(model)
    info = model_info(path, read_header(path))
    usage = None
    if info.is_moe:
        from localsym.experts.live import learned_usage

        usage = learned_usage(model_store.identity(path), info.n_layer, info.n_expert)
    plan = make_plan(info, opts, usage, what_if=True)
    d = {k: v for k, v in info.__dict__.items() if k not in ("layer_bytes", "expert_bytes", "chat_template")}
    d["path"] = str(info.path)
    d["chat_template"] = info.chat_template is not None
    d["kv_bytes_per_token"] = info.kv_bytes_per_token()
    d["plan"] = plan.as_dict()
    d["plan_vram_budget"] = plan.vram_budget
    d["plan_gpu_bytes"] = plan.gpu_bytes
    d["plan_parts"] = dict(plan.parts)
    d["plan_notes"] = list(plan.notes)
    d["ollama"] = ollama_summary(path, info.chat_template is not None)
    return d


def model_card(model: str) -> dict[str, Any]:
    """The parts of a model that `show --template/--license/--system/--parameters` print,
    from its header alone (instant): the GGUF's chat template (the one used), its license
    (``general.license``, with ``general.license.name``/``.link`` when present; else Ollama's
    license text, else the catalog's), Ollama's system prompt and parameters when Ollama
    keeps the model, and the stop words localsym takes from them."""
    from localsym.catalog import load_catalog
    from localsym.model_sources import ollama_extras

    path = model_store.resolve(model)
    meta = read_header(path).metadata
    template = meta.get("tokenizer.chat_template")
    extras = ollama_extras(path) or {}
    license_parts = [str(meta[k]) for k in ("general.license", "general.license.name") if meta.get(k)]
    if meta.get("general.license.link"):
        license_parts.append(str(meta["general.license.link"]))
    license_text, license_from = "\n".join(dict.fromkeys(license_parts)) or None, "gguf"
    if license_text is None and extras.get("license"):
        lic = extras["license"]
        license_text, license_from = ("\n\n".join(lic) if isinstance(lic, list) else str(lic)), "ollama"
    if license_text is None:
        manifest = load_catalog().get(model)
        if manifest is not None and manifest.license:
            license_text, license_from = manifest.license, "catalog"
    params = dict(extras.get("params") or {})
    stop = params.get("stop")
    return {
        "model": model,
        "path": str(path),
        "template": template if isinstance(template, str) else None,
        "license": license_text,
        "license_source": license_from if license_text else None,
        "system": extras.get("system") or None,
        "ollama_parameters": params,
        "stop": list(stop) if isinstance(stop, list) else ([stop] if stop else []),
    }


def ollama_summary(path, gguf_has_template: bool) -> dict[str, Any] | None:
    """What Ollama keeps beside a model it stores, and which of it localsym uses: its
    system prompt and stop words as defaults; never its template (Go syntax), since the
    GGUF's own Jinja template comes first (and a GGUF without one runs in completion form)."""
    from localsym.model_sources import ollama_extras

    ex = ollama_extras(path)
    if ex is None:
        return None
    params = ex.get("params") or {}
    stop = params.get("stop")
    note = None
    if ex.get("template"):
        note = (
            "Ollama's template (Go syntax) differs from the GGUF's own, which is used"
            if gguf_has_template
            else "Ollama has a template (Go syntax) but the GGUF has none: localsym uses completion form"
        )
    return {
        "system": ex.get("system"),
        "stop": list(stop) if isinstance(stop, list) else ([stop] if stop else []),
        "parameters": params,
        "template": bool(ex.get("template")),
        "license": bool(ex.get("license")),
        "note": note,
    }


class Tokenizer:
    """A model's tokenizer alone: a vocab-only load (no weights), for benchmarks and tools
    that count or cut text in the model's own tokens."""

    def __init__(self, model: str) -> None:
        path = model_store.resolve(model)
        self._model = Model(path, vocab_only=True)
        self.n_ctx_train = model_info(path).n_ctx_train  # the model's native context

    def tokenize(self, text: str) -> list[int]:
        return self._model.tokenize(text)

    def detokenize(self, tokens: list[int]) -> str:
        return self._model.detokenize(tokens)

    def close(self) -> None:
        self._model.close()

    def __enter__(self) -> Tokenizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PlainModel:
    """The model alone, no memory layer: the same-run baseline of benchmarks (plain
    prefill of the same tokens on the same device)."""

    def __init__(self, model: str, opts: RunOptions) -> None:
        self.engine = Engine(model_store.resolve(model), opts)

    def tokenize(self, text: str) -> list[int]:
        return self.engine.model.tokenize(text)

    def prefill(self, tokens: list[int], window: int, block: int) -> float:
        """Seconds to decode ``tokens`` as a session ingests a document, without the memory
        layer: ``block`` tokens a call, each after at most ``window`` earlier tokens (the
        oldest blocks dropped and the rest shifted back, as the hot context slides)."""
        ctx = self.engine.ctx
        window = min(window, ctx.n_ctx - block - 16)
        ctx.clear()
        sizes: list[int] = []
        t0 = time.perf_counter()
        for i in range(0, len(tokens), block):
            chunk = tokens[i : i + block]
            while sizes and sum(sizes) + len(chunk) > window:
                first = sizes.pop(0)
                ctx.seq_rm(0, 0, first)
                ctx.seq_add(0, first, -1, -first)
            ctx.decode(chunk, sum(sizes), 0, logits="last")
            sizes.append(len(chunk))
        ctx.logits()  # the decode is done (GPU backends run asynchronously)
        seconds = time.perf_counter() - t0
        ctx.clear()
        return seconds

    def close(self) -> None:
        self.engine.close()

    def __enter__(self) -> PlainModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
