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


def _decode_rate(model, rec, observer, n_tokens: int) -> float:
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
            rec.end_batch()
            pos += 1
        return n_tokens / (time.perf_counter() - t0)
    finally:
        sampler.close()
        ctx.close()


def _prefetch_speed(path: Path, n_tokens: int) -> dict:
    """Decode tok/s after dropping the file from the page cache, with and without prefetch."""
    from localsym.experts.prefetch import Prefetcher
    from localsym.experts.traces import RoutingRecorder
    from localsym.runtime.bridge import Model
    from localsym.runtime.model_info import model_info

    info = model_info(path)
    runs: dict[str, list[float]] = {"plain": [], "prefetch": []}
    issued = 0
    # a discarded warm-up, then alternating runs: one-time costs and drift hit neither side
    for mode in ("plain", "plain", "prefetch", "plain", "prefetch", "plain", "prefetch"):
        pf = Prefetcher(path, budget_bytes=1 << 30)
        pf.drop_all()
        pred = MarkovPredictor(info.n_layer, info.n_expert)
        rec = RoutingRecorder(info.n_layer, info.n_expert_used)
        state = {"prev": None}

        def on_layer(layer, experts, pf=pf, pred=pred, state=state):
            ex = experts[-1]
            if layer + 1 < info.n_layer:
                pf.willneed(layer + 1, pred.predict(layer + 1, ex, None, info.n_expert_used))
            pred.learn(layer, ex, state["prev"] if layer else None, None)
            state["prev"] = ex

        if mode == "prefetch":
            rec.on_layer = on_layer
        model = Model(path, use_mmap=True)
        runs[mode].append(_decode_rate(model, rec, rec.observer, n_tokens))
        issued = max(issued, pf.issued)
        model.close()
        pf.close()
    plain, pre = float(np.median(runs["plain"][1:])), float(np.median(runs["prefetch"]))
    return {"decode_tok_s_plain": round(plain, 2), "decode_tok_s_prefetch": round(pre, 2),
            "prefetch_ratio": round(pre / plain, 3), "prefetch_issued_bytes": issued}


def _observer_cost(path: Path, n_tokens: int) -> dict:
    """Decode tok/s with the routing observer on vs off: what recording costs."""
    from localsym.experts.traces import RoutingRecorder
    from localsym.runtime.bridge import Model
    from localsym.runtime.model_info import model_info

    info = model_info(path)
    res: dict[str, list[float]] = {"off": [], "on": []}
    model = Model(path)
    for mode in ("off", "off", "on", "off", "on", "off", "on"):  # warm-up, then alternate
        rec = RoutingRecorder(info.n_layer, info.n_expert_used)
        res[mode].append(_decode_rate(model, rec, rec.observer if mode == "on" else None, n_tokens))
    model.close()
    off, on = float(np.median(res["off"][1:])), float(np.median(res["on"]))
    return {"decode_tok_s_observer_off": round(off, 2), "decode_tok_s_observer_on": round(on, 2),
            "observer_ratio": round(on / off, 3)}


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model
    from localsym.runtime.model_info import model_info

    result: dict = {}
    src = MarkovSource.random(args.layers, args.experts, args.used, seed=args.seed)
    syn = src.sample(args.tokens, seed=args.seed + 1)
    result["synthetic"] = {"layers": args.layers, "experts": args.experts, "used": args.used, "tokens": args.tokens,
                           "policies": _policies(syn, args.layers, args.experts, src)}
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

            tr = record(path, stdlib_text(4000), n_decode=args.decode)
            result["recorded"] = {"model": label, "layers": info.n_layer, "experts": info.n_expert,
                                  "used": info.n_expert_used, "tokens": int(len(tr)),
                                  "policies": _policies(tr, info.n_layer, info.n_expert)}
            result["recorded"].update(_observer_cost(path, args.decode))
            result["recorded"].update(_prefetch_speed(path, args.decode))

    def table(r: dict) -> str:
        lines = [f"bench experts: synthetic Markov traces ({r['synthetic']['tokens']} tokens, "
                 f"{r['synthetic']['layers']} layers x {r['synthetic']['experts']} experts, {r['synthetic']['used']} used)"]
        head = "  capacity " + "".join(f"{c:>8}" for c in CAPACITIES)
        lines.append(head)
        for name, row in list(r["policies"].items()) + [("bayes", r["bayes_optimal"])]:
            lines.append(f"  {name:<9}" + "".join(f"{row[str(c)]:>8.3f}" for c in CAPACITIES))
        lines.append(f"  prediction hit rate: {r['prediction_hit_rate']}; predict {r['predict_us_per_token_layer']} us per token per layer")
        rec = r["recorded"]
        lines.append(f"recorded: {rec['model']}")
        if "policies" in rec:
            for name, row in rec["policies"].items():
                lines.append(f"  {name:<9}" + "".join(f"{row[str(c)]:>8.3f}" for c in CAPACITIES))
            lines.append(f"  observer on/off decode ratio {rec['observer_ratio']}; prefetch/plain decode ratio {rec['prefetch_ratio']}")
        else:
            lines.append(f"  {rec['note']}")
        return "\n".join(lines)

    emit(result, args, table)
    return 0
