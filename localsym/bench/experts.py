"""Expert prediction and caching: hit rates at 10-50% capacity for LRU, frequency, the
oracle (Belady), seed paper 003's co-firing baseline and the Markov predictor, on synthetic
Markov traces (with their Bayes-optimal rate) and on traces recorded from a real GGUF
through the eval callback; prediction cost; and decode speed with and without prefetch."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from localsym.bench import emit
from localsym.experts import cache_sim as cs
from localsym.experts.predictor import CoFiringPredictor, MarkovPredictor, OraclePredictor
from localsym.experts.traces import MarkovSource, record

CAPACITIES = (0.1, 0.2, 0.3, 0.4, 0.5)


def _policies(trace: np.ndarray, n_layer: int, n_expert: int, source=None) -> dict:
    out: dict[str, dict[str, float]] = {}
    for frac in CAPACITIES:
        cap = max(1, int(frac * n_layer * n_expert))
        row = {
            "lru": cs.lru(trace, n_expert, cap),
            "frequency": cs.lfu(trace, n_expert, cap),
            "oracle": cs.belady(trace, n_expert, cap),
            "cofiring": cs.lru(trace, n_expert, cap, CoFiringPredictor(n_layer, n_expert)),
            "markov": cs.lru(trace, n_expert, cap, MarkovPredictor(n_layer, n_expert)),
        }
        if source is not None:
            row["bayes"] = cs.lru(trace, n_expert, cap, OraclePredictor(source))
        for name, v in row.items():
            out.setdefault(name, {})[str(frac)] = round(v, 4)
    return out


def _predict_cost(trace: np.ndarray, n_layer: int, n_expert: int) -> float:
    p = MarkovPredictor(n_layer, n_expert)
    k = trace.shape[2]
    t0 = time.perf_counter()
    prev_tok = [None] * n_layer
    for row in trace:
        prev = None
        for layer in range(n_layer):
            ex = row[layer]
            p.predict(layer, prev, prev_tok[layer], k)
            p.learn(layer, ex, prev, prev_tok[layer])
            prev, prev_tok[layer] = ex, ex
    return (time.perf_counter() - t0) / len(trace) * 1e6


def _decode_rate(model, observer, n_tokens: int) -> float:
    """Greedy decode tok/s in a fresh 512-token context after a short prompt."""
    from localsym.runtime.bridge import Context, Sampler

    ctx = Context(model, 512, observer=observer)
    sampler = Sampler(0.0)
    try:
        toks = model.tokenize("The history of the")
        ctx.decode(toks, 0, 0)
        pos = len(toks)
        t0 = time.perf_counter()
        for _ in range(n_tokens):
            tok = sampler.sample(ctx)
            ctx.decode([tok], pos, 0)
            pos += 1
        return n_tokens / (time.perf_counter() - t0)
    finally:
        sampler.close()
        ctx.close()


def _alternate(modes: dict, n_tokens: int) -> dict[str, float]:
    """Median decode tok/s per mode, modes interleaved after a discarded warm-up, so that
    one-time costs and drift hit no side. ``modes``: name -> () -> (model, observer, done)."""
    names = list(modes)
    order = [names[0]] + names * 3
    runs: dict[str, list[float]] = {n: [] for n in names}
    for i, name in enumerate(order):
        model, observer, done = modes[name]()
        rate = _decode_rate(model, observer, n_tokens)
        done()
        if i:
            runs[name].append(rate)
    return {n: float(np.median(v)) for n, v in runs.items()}


def _placement(path: Path, vram: str | None) -> dict:
    """The fit plan's offload for ``--vram`` (as `run` would place the model): layers on the
    GPU and the layers whose experts stay in RAM. Nothing offloaded on a CPU build."""
    from localsym.runtime.engine import RunOptions, make_plan
    from localsym.runtime.model_info import model_info

    plan = make_plan(model_info(path), RunOptions(n_ctx=1024, vram=vram))
    return {"n_gpu_layers": plan.n_gpu_layers, "n_cpu_moe": plan.cpu_moe_layers or plan.n_cpu_moe}


def _prefetch_speed(path: Path, n_tokens: int, place: dict | None = None) -> dict:
    """Decode tok/s after dropping the file from the page cache: plain llama.cpp against a
    session's live experts (tap, online learning, next-token prefetch), same run."""
    from localsym.experts.live import LiveExperts
    from localsym.experts.prefetch import Prefetcher
    from localsym.runtime.bridge import Model
    from localsym.runtime.model_info import model_info

    info = model_info(path)
    issued = [0]

    def cold(with_live: bool):
        def make():
            dropper = Prefetcher(path, 0)
            dropper.drop_all()
            dropper.close()
            model = Model(path, use_mmap=True, **(place or {}))
            live = LiveExperts(path, info, None) if with_live else None

            def done():
                if live is not None:
                    assert live.prefetch is not None  # LiveExperts prefetches by default
                    issued[0] = max(issued[0], live.prefetch.issued)
                    live.close()
                model.close()

            return model, (live.observer if live else None), done

        return make

    rates = _alternate({"plain": cold(False), "prefetch": cold(True)}, n_tokens)
    return {
        "decode_tok_s_plain": round(rates["plain"], 2),
        "decode_tok_s_prefetch": round(rates["prefetch"], 2),
        "prefetch_ratio": round(rates["prefetch"] / rates["plain"], 3),
        "prefetch_issued_bytes": issued[0],
    }


def _observer_cost(path: Path, n_tokens: int, place: dict | None = None) -> dict:
    """Decode tok/s with routing recorded vs not (model warm in the page cache): what
    recording costs."""
    from localsym.experts.traces import RoutingRecorder
    from localsym.runtime.bridge import Model
    from localsym.runtime.model_info import model_info

    info = model_info(path)
    model = Model(path, **(place or {}))
    modes = {
        "off": lambda: (model, None, lambda: None),
        "on": lambda: (model, RoutingRecorder(info.n_layer, info.n_expert_used).observer, lambda: None),
    }
    rates = _alternate(modes, n_tokens)
    model.close()
    return {
        "decode_tok_s_observer_off": round(rates["off"], 2),
        "decode_tok_s_observer_on": round(rates["on"], 2),
        "observer_ratio": round(rates["on"] / rates["off"], 3),
    }


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model
    from localsym.runtime.model_info import model_info

    result: dict = {}
    src = MarkovSource.random(args.layers, args.experts, args.used, seed=args.seed)
    syn = src.sample(args.tokens, seed=args.seed + 1)
    result["synthetic"] = {
        "layers": args.layers,
        "experts": args.experts,
        "used": args.used,
        "tokens": args.tokens,
        "policies": _policies(syn, args.layers, args.experts, src),
    }
    result["policies"] = result["synthetic"]["policies"]
    result["bayes_optimal"] = result["policies"].pop("bayes")
    result["prediction_hit_rate"] = {
        "markov": round(cs.prediction_hit_rate(syn, args.experts, MarkovPredictor(args.layers, args.experts)), 4),
        "cofiring": round(cs.prediction_hit_rate(syn, args.experts, CoFiringPredictor(args.layers, args.experts)), 4),
        "bayes": round(cs.prediction_hit_rate(syn, args.experts, OraclePredictor(src)), 4),
    }
    us = _predict_cost(syn[: min(len(syn), 1000)], args.layers, args.experts)
    result["predict_us_per_token"] = round(us, 2)
    result["predict_us_per_token_layer"] = round(us / args.layers, 2)

    with tempfile.TemporaryDirectory(prefix="localsym-bench-experts-") as tmp:
        if args.model:
            path = model_store.resolve(args.model)
            label = args.model
        else:
            from localsym.experts.tiny_moe import build

            path = build(Path(tmp) / "tiny-moe.gguf", model_store.resolve(default_model()))
            label = "tiny random-weight qwen3moe (built)"
        info = model_info(path)
        if not info.is_moe:
            result["recorded"] = {"model": label, "note": "a dense model: no experts exist"}
        else:
            from localsym.bench.corpus import stdlib_text

            place = _placement(path, args.vram)
            tr = record(path, stdlib_text(4000), n_decode=args.decode, **place)
            result["recorded"] = {
                "model": label,
                "n_gpu_layers": place["n_gpu_layers"],
                "layers": info.n_layer,
                "experts": info.n_expert,
                "used": info.n_expert_used,
                "tokens": int(len(tr)),
                "policies": _policies(tr, info.n_layer, info.n_expert),
            }
            result["recorded"].update(_observer_cost(path, args.decode, place))
            result["recorded"].update(_prefetch_speed(path, args.decode, place))

    def table(r: dict) -> str:
        lines = [
            f"bench experts: synthetic Markov traces ({r['synthetic']['tokens']} tokens, "
            f"{r['synthetic']['layers']} layers x {r['synthetic']['experts']} experts, "
            f"{r['synthetic']['used']} used)"
        ]
        head = "  capacity " + "".join(f"{c:>8}" for c in CAPACITIES)
        lines.append(head)
        for name, row in list(r["policies"].items()) + [("bayes", r["bayes_optimal"])]:
            lines.append(f"  {name:<9}" + "".join(f"{row[str(c)]:>8.3f}" for c in CAPACITIES))
        lines.append(
            f"  prediction hit rate: {r['prediction_hit_rate']}; "
            f"predict {r['predict_us_per_token_layer']} us per token per layer"
        )
        rec = r["recorded"]
        lines.append(f"recorded: {rec['model']}")
        if "policies" in rec:
            for name, row in rec["policies"].items():
                lines.append(f"  {name:<9}" + "".join(f"{row[str(c)]:>8.3f}" for c in CAPACITIES))
            lines.append(
                f"  observer on/off decode ratio {rec['observer_ratio']}; "
                f"prefetch/plain decode ratio {rec['prefetch_ratio']}"
            )
        else:
            lines.append(f"  {rec['note']}")
        return "\n".join(lines)

    emit(result, args, table)
    return 0
