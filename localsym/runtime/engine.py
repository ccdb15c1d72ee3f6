"""A loaded model with a context sized by the fit plan, and streaming generation."""

from __future__ import annotations

import codecs
import contextlib
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from localsym.errors import LocalsymError
from localsym.runtime.bridge import Cancelled, Context, Model, ModelKey, Sampler, gpu_offload_supported
from localsym.runtime.chat_template import ChatTemplate, Message
from localsym.runtime.context_pool import ContextPool, ContextView
from localsym.runtime.fit_plan import FitPlan, detect_vram, place_experts, plan_beside, plan_fit, vram_budget
from localsym.runtime.gguf_file import check_complete, read_header
from localsym.runtime.model_info import ModelInfo, model_info


@dataclass
class RunOptions:
    """llama.cpp-named knobs; None means "let the fit plan choose"."""

    n_ctx: int | None = None  # -c; 0 = the model's own context
    n_gpu_layers: int | None = None  # -ngl
    type_k: str | None = None  # -ctk
    type_v: str | None = None  # -ctv
    flash_attn: bool | None = None  # -fa
    n_threads: int | None = None  # -t
    n_cpu_moe: int | None = None  # --n-cpu-moe
    vram: str | None = None  # --vram 8GiB|16GiB|auto|cpu
    n_seq_max: int = 1
    n_batch: int = 512
    # --parallel: 0 = this engine's own context; N = one context shared by every engine of
    # the same model and settings in the process, N of them resident at once (context_pool)
    parallel: int = 0


@dataclass
class GenStats:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    ttft_s: float = 0.0
    cancelled: bool = False
    stop_reason: str = ""
    tokens: list[int] = field(default_factory=list)  # generated ids (no end-of-generation token)
    n_decoded: int = 0  # how many of them are in the KV cache (the last may not be)
    prompt_decoded: bool = False  # the whole prompt is in the KV cache
    grammar_resampled: int = 0  # tokens the grammar rejected, sampled again from what it allows

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        # The first completion token comes from the prefill's logits; the rest each cost a decode.
        n = max(self.completion_tokens - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


@dataclass
class GenParams:
    max_tokens: int = 512
    temp: float = 0.0
    seed: int = 0xFFFFFFFF
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    stop: Sequence[str] = field(default_factory=tuple)
    repeat_penalty: float = 1.0  # over the last 64 generated tokens; 1 = off
    grammar: str | None = None  # GBNF (rule ``root``) every answer token must match (localsym.runtime.grammar)


def make_plan(
    info: ModelInfo,
    opts: RunOptions,
    expert_usage: np.ndarray | None = None,
    what_if: bool = False,
    beside: FitPlan | None = None,
    gpu_in_use: int = 0,
    parallel: int = 1,
) -> FitPlan:
    """The fit plan; with learned routing (``expert_usage`` [layers, experts]) the experts
    kept in RAM are those of the layers with the smallest working sets, not the first N.

    ``what_if`` plans for an explicit ``--vram`` even on a CPU build of llama.cpp (what
    `show` prints for the laptop the user asks about); running always plans for the build.

    ``beside``: the plan of an open engine whose weights this one will share; only a context
    is planned, with its placement, in the VRAM left: the free VRAM now (``--vram auto``),
    or the budget less ``gpu_in_use``, what this process's open engines hold on the GPU.

    ``parallel``: the context holds that many sessions of -c tokens each (``serve --parallel``).
    """
    if beside is not None:
        if beside.device != "gpu":
            left = 0
        elif opts.vram in (None, "auto"):
            left = detect_vram()
        else:
            left = vram_budget(opts.vram) - gpu_in_use
        return plan_beside(
            info,
            beside,
            left,
            psutil.virtual_memory().available,
            opts.n_ctx,
            opts.type_k,
            opts.type_v,
            opts.flash_attn,
            parallel,
        )
    vram = vram_budget(opts.vram)
    what_if_gpu = False  # planning for a GPU this build of llama.cpp cannot use
    if vram and not gpu_offload_supported():
        if what_if and opts.vram not in (None, "auto"):
            what_if_gpu = True
        else:
            vram = 0  # a CPU build of llama.cpp: plan for the CPU, say so in the notes
    ram = psutil.virtual_memory().available
    plan = plan_fit(
        info,
        vram,
        ram,
        opts.n_ctx,
        opts.type_k,
        opts.type_v,
        opts.n_gpu_layers,
        opts.flash_attn,
        opts.n_cpu_moe,
        parallel,
    )
    if expert_usage is not None and opts.n_cpu_moe is None:  # the user's --n-cpu-moe means the first N
        place_experts(plan, info, expert_usage)
    if what_if_gpu:
        plan.notes.append(
            "this llama.cpp build has no GPU offload: `run` and `chat` here would use "
            'the CPU (rebuild with CMAKE_ARGS="-DGGML_CUDA=on")'
        )
    return plan


_placing = threading.Lock()  # plan, load and context as one step: engines opening at once agree
_open_lock = threading.Lock()
_open: list[Engine] = []  # open engines, for the weights they share and the VRAM they hold


def planned_windows(opts: RunOptions, routed: bool) -> int:
    """How many ``-c`` windows an engine's plan holds: ``--parallel N`` sessions share one
    context of N, unless the engine watches MoE routing (a routing tap sees one context's
    batches: it gets a context of its own)."""
    return opts.parallel if opts.parallel > 1 and not routed else 1


def _asked(opts: RunOptions) -> tuple:
    """The placement a caller asked for: engines that asked alike share one copy of the weights."""
    return (opts.n_gpu_layers, opts.n_cpu_moe, opts.vram)


class Engine:
    """One model, one context, the chat template: what `run`, `bench` and sessions share.

    The weights are shared: engines on the same file with the same asked placement use one
    loaded model (``Model.shared``), each with its own context; the second one's fit plan
    keeps the first one's placement and budgets only its own KV cache and compute buffer."""

    def __init__(
        self, path: str | Path, opts: RunOptions | None = None, observer=None, expert_usage: np.ndarray | None = None
    ) -> None:
        self.opts = opts or RunOptions()
        self.plan: FitPlan
        self._closed = False
        header = read_header(path)
        check_complete(header)
        self.info = model_info(path, header)
        self._file = ModelKey.of(path).file
        with _placing:
            with _open_lock:
                others = list(_open)
            beside = next((e for e in others if e._file == self._file and _asked(e.opts) == _asked(self.opts)), None)
            mate = next((e for e in others if self._pool_mate(e, observer)), None)
            # the cells a shared context holds: --parallel N sessions of -c tokens each
            self.view_ctx = 0
            if mate is not None:  # its context is ours too: nothing new to place or budget
                self.plan = mate.plan.sharing()
                self.view_ctx = mate.view_ctx
            else:
                # --parallel N: the first engine plans the whole shared context, N sessions
                # of -c each (the auto window chosen so that all N fit)
                n = planned_windows(self.opts, observer is not None)
                self.plan = make_plan(
                    self.info,
                    self.opts,
                    expert_usage,
                    beside=beside.plan if beside is not None else None,
                    gpu_in_use=sum(e.plan.gpu_bytes for e in others),
                    parallel=n,
                )
                self.view_ctx = self.plan.n_ctx // n
            self.model = Model.shared(
                path, n_gpu_layers=self.plan.n_gpu_layers, n_cpu_moe=self.plan.cpu_moe_layers or self.plan.n_cpu_moe
            )
            try:
                self._open_context(observer)
            except BaseException:
                self.model.close()
                raise
            with _open_lock:
                _open.append(self)
        bos = self.model.piece(self.model.bos, special=True).decode("utf-8", "replace") if self.model.bos >= 0 else ""
        eos = self.model.piece(self.model.eos, special=True).decode("utf-8", "replace") if self.model.eos >= 0 else ""
        self.template = ChatTemplate(self.model.chat_template(), bos, eos)

    def _pool_mate(self, other: Engine, observer: object) -> bool:
        """``other`` holds a view of the shared context this engine would get (same file,
        placement asked, --parallel, -c, cache types, batch and threads)."""
        keys = "n_gpu_layers n_cpu_moe vram parallel n_ctx type_k type_v flash_attn n_seq_max n_batch n_threads".split()
        return (
            self.opts.parallel > 0
            and observer is None
            and isinstance(other.ctx, ContextView)
            and other._file == self._file
            and all(getattr(other.opts, k) == getattr(self.opts, k) for k in keys)
        )

    def _open_context(self, observer) -> None:
        self.ctx: Context | ContextView
        if self.opts.parallel > 0 and observer is None:  # a routing tap sees one context's batches
            pool = ContextPool.shared(
                self.model,
                self.view_ctx,
                self.opts.parallel,
                self.opts.n_seq_max,
                n_batch=self.opts.n_batch,
                type_k=self.plan.type_k,
                type_v=self.plan.type_v,
                flash_attn=self.plan.flash_attn,
                n_threads=self.opts.n_threads,
            )
            self.ctx = pool.view()
            return
        self.ctx = Context(
            self.model,
            self.plan.n_ctx,
            n_batch=self.opts.n_batch,
            n_seq_max=self.opts.n_seq_max,
            type_k=self.plan.type_k,
            type_v=self.plan.type_v,
            flash_attn=self.plan.flash_attn,
            n_threads=self.opts.n_threads,
            observer=observer,
        )

    def close(self) -> None:
        """Free this engine's context and give back its use of the shared model (the last
        engine on it frees the weights). Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        with _open_lock:
            if self in _open:
                _open.remove(self)
        self.ctx.close()
        self.model.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def chat_tokens(self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any) -> list[int]:
        """The rendered conversation's tokens: the template's markup with special tokens parsed,
        the messages' text as plain text (a prompt that spells ``<|im_end|>`` stays text).
        ``extra``: more template variables (``tools``)."""
        text = self.template.render(messages, add_generation_prompt, **extra)
        return self._tokenize_parts(self._user_text_parts(text, messages, add_generation_prompt, extra))

    def tokenize_prompt(self, text: str, plain: Sequence[str] = ()) -> list[int]:
        """Tokens of a full prompt: BOS added when the model wants one and the text lacks it.

        Special tokens are parsed in ``text`` (the template's markup) but not in the ``plain``
        strings (user text), looked for in order (each also trimmed, as templates trim)."""
        return self._tokenize_parts(self._plain_parts(text, plain))

    def _user_text_parts(
        self, text: str, messages: Sequence[Message], add_generation_prompt: bool, extra: dict[str, Any] | None = None
    ) -> list[tuple[str, bool]]:
        """``text`` cut into (piece, is_markup): the template rendered again with a marker for
        each message's content gives the markup between them. Where a template changes content
        (trims it), the contents are looked for in order instead."""
        marks = [f"\u2063{i}\u2063" for i in range(len(messages))]
        try:
            shape = self.template.render(
                [{**m, "content": k} for m, k in zip(messages, marks, strict=True)],
                add_generation_prompt,
                **(extra or {}),
            )
        except LocalsymError:
            shape = ""
        pieces = re.split("(\u2063\\d+\u2063)", shape)
        parts: list[tuple[str, bool]] = []
        for n, piece in enumerate(pieces):
            if n % 2 == 0:
                parts.append((piece, True))
            else:
                parts.append((messages[int(piece.strip("\u2063"))]["content"], False))
        if shape and "".join(p for p, _ in parts) == text:
            return parts
        return self._plain_parts(text, [m.get("content") or "" for m in messages])

    @staticmethod
    def _plain_parts(text: str, plain: Sequence[str]) -> list[tuple[str, bool]]:
        parts: list[tuple[str, bool]] = []
        at = 0
        for p in plain:
            for cand in (p, p.strip()):
                i = text.find(cand, at) if cand else -1
                if i >= 0:
                    parts += [(text[at:i], True), (cand, False)]
                    at = i + len(cand)
                    break
        return [*parts, (text[at:], True)]

    def _tokenize_parts(self, parts: Sequence[tuple[str, bool]]) -> list[int]:
        toks: list[int] = []
        for piece, markup in parts:
            if piece:
                toks += self.model.tokenize(piece, add_special=False, parse_special=markup)
        if self.model.add_bos and self.model.bos >= 0 and (not toks or toks[0] != self.model.bos):
            toks.insert(0, self.model.bos)
        return toks

    def generate(
        self,
        prompt: Sequence[int],
        start_pos: int = 0,
        params: GenParams | None = None,
        seq: int = 0,
        stats: GenStats | None = None,
    ) -> Iterator[str]:
        """Decode ``prompt`` at ``start_pos`` in sequence ``seq``, then stream text pieces.

        Stops at an end-of-generation token, ``max_tokens``, a stop string, the context's end
        or ``ctx.cancel()``; ``stats`` is filled in as it goes.
        """
        params = params or GenParams()
        stats = stats if stats is not None else GenStats()
        ctx = self.ctx
        if start_pos + len(prompt) >= ctx.n_ctx:
            raise LocalsymError(
                f"the prompt ({start_pos + len(prompt)} tokens) does not fit the {ctx.n_ctx}-token context: raise -c"
            )
        sampler = Sampler(
            params.temp,
            params.top_k,
            params.top_p,
            params.min_p,
            params.seed,
            repeat_penalty=params.repeat_penalty,
            n_vocab=self.model.n_vocab,
            grammar=params.grammar,
            model=self.model,
        )
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        ctx.clear_cancel()
        t0 = time.perf_counter()
        stats.prompt_tokens = len(prompt)
        t1 = 0.0
        # a context shared by sessions: held from the prompt to the last token, so that no
        # other session takes this one's room (its sequence) between two steps
        held = contextlib.ExitStack()
        try:
            held.enter_context(ctx.hold())
            # decode and sample in one step: a context shared by sessions is not decoded by
            # another between the two (runtime/context_pool.py)
            tok = ctx.decode_sample(prompt, start_pos, seq, sampler)
            stats.prompt_decoded = True
            stats.prefill_s = time.perf_counter() - t0
            pos = start_pos + len(prompt)
            t1 = time.perf_counter()
            with ctx.generating():
                yield from self._decode_loop(ctx, tok, pos, seq, params, sampler, decoder, stats, t0)
            stats.decode_s = time.perf_counter() - t1
        except Cancelled:
            stats.cancelled = True
            stats.stop_reason = "cancelled"
            if not stats.prefill_s:
                stats.prefill_s = time.perf_counter() - t0
            elif t1:
                stats.decode_s = time.perf_counter() - t1  # the tokens decoded before the stop count
        finally:
            stats.grammar_resampled = sampler.resampled
            sampler.close()
            held.close()
        tail = decoder.decode(b"", final=True)
        if tail:
            yield tail

    def _decode_loop(
        self,
        ctx: Context | ContextView,
        tok: int,
        pos: int,
        seq: int,
        params: GenParams,
        sampler: Sampler,
        decoder: codecs.IncrementalDecoder,
        stats: GenStats,
        t0: float,
    ) -> Iterator[str]:
        """Token by token from the first sampled ``tok`` (at ``pos``) until a stop."""
        text = ""
        while True:
            if self.model.is_eog(tok):
                stats.stop_reason = "eog"
                return
            stats.completion_tokens += 1
            stats.tokens.append(tok)
            if stats.completion_tokens == 1:
                stats.ttft_s = time.perf_counter() - t0
            piece = decoder.decode(self.model.piece(tok))
            if piece:
                text += piece
                yield piece
            if params.stop and any(s in text for s in params.stop):
                stats.stop_reason = "stop"
                return
            if stats.completion_tokens >= params.max_tokens:
                stats.stop_reason = "length"
                return
            if pos + 1 >= ctx.n_ctx:
                stats.stop_reason = "context"
                return
            if ctx.cancelled:
                raise Cancelled()
            tok = ctx.decode_sample([tok], pos, seq, sampler)
            stats.n_decoded += 1
            pos += 1
