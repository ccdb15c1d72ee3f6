"""KV quantization: bytes, perplexity and kernel speed for F16, Q8, Q4, Q3, Q2 and adaptive.

The prefix of a real text (CPython stdlib sources) is decoded once; its KV blob is cut into
blocks, each block round-tripped through a format, written back into llama.cpp, and the
perplexity of the text that follows is measured against the untouched F16 blob, same run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from localsym.bench import emit
from localsym.bench.corpus import stdlib_text
from localsym.memory import kv_quant as kq
from localsym.runtime import kv_state

NAMES = ("f16", "q8", "q4", "q3", "q2", "adaptive")


def perplexity(ctx, blob: bytes, start: int, tokens: list[int]) -> float:
    ctx.clear()
    ctx.state_seq_set(0, blob)
    ctx.decode(tokens, start, 0, logits="all")
    lg = ctx.logits_all(len(tokens)).astype(np.float64)
    mx = lg.max(axis=1, keepdims=True)
    lse = np.log(np.exp(lg - mx).sum(axis=1)) + mx[:, 0]
    n = len(tokens) - 1
    lp = lg[np.arange(n), tokens[1:]] - lse[:n]
    return float(np.exp(-lp.mean()))


def roundtrip(stream: kv_state.KVStream, policy: kq.QuantPolicy, n_head_kv: int, block: int):
    """Every block of ``stream`` through ``policy``; returns (new stream, bytes, seconds
    quantizing, seconds dequantizing, the format mix)."""
    ks = [k.copy() for k in stream.k]
    vs = [v.copy() for v in stream.v]
    nbytes, tq, td, mix = 0, 0.0, 0.0, {}
    for b0 in range(0, stream.n_cells, block):
        sl = slice(b0, b0 + block)
        k_in = [k[sl].astype(np.float32) for k in stream.k]
        v_in = [v[sl].astype(np.float32) for v in stream.v]
        t0 = time.perf_counter()
        rep = kq.quantize_layers(k_in, v_in, policy, n_head_kv)
        tq += time.perf_counter() - t0
        nbytes += rep.nbytes
        for key, n in rep.mix().items():
            mix[key] = mix.get(key, 0) + n
        t0 = time.perf_counter()
        outs = [(kq.dequantize(c.k), kq.dequantize(c.v)) for c in rep.choices]
        td += time.perf_counter() - t0
        for L, (k, v) in enumerate(outs):
            ks[L][sl] = k
            vs[L][sl] = v
    new = kv_state.KVStream(stream.positions, stream.seq_ids, stream.v_trans, stream.k_types,
                            stream.v_types, ks, vs)
    return new, nbytes, tq, td, mix


def kernel_speed(stream: kv_state.KVStream, fmt: str, reps: int = 3) -> tuple[float, float]:
    """GB/s of the quantize and dequantize kernels over every layer, counted in the F16
    bytes they stand for (the data the tiers actually move)."""
    ks = [np.ascontiguousarray(k, dtype=np.float32) for k in stream.k]
    f16_bytes = sum(k.size for k in ks) * 2
    kq.dequantize(kq.quantize(ks[0], fmt))  # compile / warm
    best_q = best_d = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        qs = [kq.quantize(k, fmt, per_channel=False) for k in ks]
        best_q = min(best_q, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for q in qs:
            kq.dequantize(q)
        best_d = min(best_d, time.perf_counter() - t0)
    return f16_bytes / best_q / 1e9, f16_bytes / best_d / 1e9


def memcpy_speed(stream: kv_state.KVStream, reps: int = 5) -> float:
    """A numpy copy of the same F16 bytes; like the kernels, it allocates its output."""
    src = [np.ascontiguousarray(k, dtype=np.float16) for k in stream.k]
    nbytes = sum(s.nbytes for s in src)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        copies = [s.copy() for s in src]
        best = min(best, time.perf_counter() - t0)
        del copies
    return nbytes / best / 1e9


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model
    from localsym.runtime.engine import Engine, RunOptions

    name = args.model or default_model()
    path = model_store.resolve(name)
    n_pre, n_follow = args.context, args.follow
    with Engine(path, RunOptions(n_ctx=n_pre + n_follow + 64, n_seq_max=1, vram="cpu",
                                 n_threads=args.threads)) as eng:
        ctx = eng.ctx
        toks = eng.model.tokenize(stdlib_text((n_pre + n_follow) * 6), add_special=True)
        pre, follow = toks[:n_pre], toks[n_pre:n_pre + n_follow]
        ctx.clear()
        ctx.decode(pre, 0, 0, logits="none")
        blob = ctx.state_seq_get(0)
        n_caches = 2 if eng.info.sliding_window else 1
        state = kv_state.parse(blob, n_caches)
        if n_caches != 1:
            from localsym.errors import LocalsymError

            raise LocalsymError("bench quant measures single-cache models (not sliding-window ones)")
        stream = state.caches[0][0]
        f16_bytes = sum(k.nbytes + v.nbytes for k, v in zip(stream.k, stream.v))
        base_ppl = perplexity(ctx, blob, n_pre, follow)
        memcpy = memcpy_speed(stream)
        result: dict = {"model": name, "context_tokens": n_pre, "follow_tokens": n_follow,
                        "block_tokens": args.block, "memcpy_gbs": round(memcpy, 3), "formats": {}}
        for fmt in NAMES:
            if fmt == "f16":
                nbytes, ppl, qg, dg, mix = f16_bytes, base_ppl, None, None, {}
            else:
                policy = kq.QuantPolicy(fixed=fmt) if fmt != "adaptive" else kq.QuantPolicy()
                if fmt == "adaptive" and args.k_threshold is not None:
                    policy.k_threshold = args.k_threshold
                if fmt == "adaptive" and args.v_threshold is not None:
                    policy.v_threshold = args.v_threshold
                new, nbytes, tq, td, mix = roundtrip(stream, policy, eng.info.n_head_kv, args.block)
                ppl = perplexity(ctx, kv_state.write(kv_state.SeqState(state.seq_id, [[new]])), n_pre, follow)
                qg, dg = kernel_speed(stream, fmt) if fmt != "adaptive" else (f16_bytes / tq / 1e9, f16_bytes / td / 1e9)
            entry = {"bytes_per_token": round(nbytes / n_pre, 1), "ratio": round(f16_bytes / nbytes, 3),
                     "ppl": round(ppl, 4), "ppl_ratio": round(ppl / base_ppl, 4),
                     "quant_gbs": None if qg is None else round(qg, 3),
                     "dequant_gbs": None if dg is None else round(dg, 3)}
            if fmt == "adaptive":
                entry["mix"] = mix
            result["formats"][fmt] = entry

    def table(r: dict) -> str:
        lines = [f"bench quant: {r['model']}, {r['context_tokens']} context tokens in {r['block_tokens']}-token "
                 f"blocks, perplexity of the next {r['follow_tokens']}; memcpy {r['memcpy_gbs']:.2f} GB/s",
                 f"{'format':<10}{'B/token':>10}{'ratio':>8}{'ppl':>9}{'ppl ratio':>11}{'quant GB/s':>12}{'dequant GB/s':>14}"]
        for n, e in r["formats"].items():
            qg = "-" if e["quant_gbs"] is None else f"{e['quant_gbs']:.2f}"
            dg = "-" if e["dequant_gbs"] is None else f"{e['dequant_gbs']:.2f}"
            lines.append(f"{n:<10}{e['bytes_per_token']:>10.0f}{e['ratio']:>8.2f}{e['ppl']:>9.3f}{e['ppl_ratio']:>11.4f}{qg:>12}{dg:>14}")
        if "mix" in r["formats"].get("adaptive", {}):
            lines.append("adaptive mix (layer-blocks): " + ", ".join(f"{k} {v}" for k, v in sorted(r["formats"]["adaptive"]["mix"].items())))
            lines.append("GB/s: fixed formats run the kernels over whole layers; adaptive is end to end per block "
                         "and layer (its quantize tries formats and measures their error)")
        return "\n".join(lines)

    emit(result, args, table)
    return 0
