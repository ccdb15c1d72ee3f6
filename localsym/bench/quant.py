"""KV quantization: bytes, perplexity and kernel speed for F16, Q8, Q4, Q3, Q2 and adaptive.

The prefix of a real text (CPython stdlib sources) is decoded once; its KV blob is cut into
blocks, each block round-tripped through a format, written back into llama.cpp, and the
perplexity of the text that follows is measured against the untouched F16 blob, same run.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np

from localsym.bench import emit
from localsym.bench.corpus import stdlib_text
from localsym.memory import kv_quant as kq
from localsym.memory.encoded_block import EncodedBlock
from localsym.runtime import kv_state

NAMES = ("f16", "q8", "q4", "q3", "q2", "adaptive")


def perplexity(ctx, blob: bytes | bytearray, start: int, tokens: list[int]) -> float:
    ctx.clear()
    ctx.state_seq_set(0, blob)
    parts = []
    for i in range(0, len(tokens), ctx.n_batch):  # llama.cpp keeps one batch's logits
        piece = tokens[i : i + ctx.n_batch]
        ctx.decode(piece, start + i, 0, logits="all")
        parts.append(ctx.logits_all(len(piece)).astype(np.float64))
    lg = np.concatenate(parts)
    mx = lg.max(axis=1, keepdims=True)
    lse = np.log(np.exp(lg - mx).sum(axis=1)) + mx[:, 0]
    n = len(tokens) - 1
    lp = lg[np.arange(n), tokens[1:]] - lse[:n]
    return float(np.exp(-lp.mean()))


def roundtrip(stream: kv_state.KVStream, policy: kq.QuantPolicy, n_head_kv: int, block: int):
    """Every block of ``stream`` sealed under ``policy`` and written back, as the tiers do
    (all layers of a block in one set of kernel calls); returns (new stream, bytes, seconds
    sealing, seconds decoding into blobs, the format mix)."""
    ks = [np.array(k) for k in stream.k]
    vs = [np.array(v) for v in stream.v]
    nbytes, tq, td = 0, 0.0, 0.0
    mix: Counter[str] = Counter()
    for b0 in range(0, stream.n_cells, block):
        sl = slice(b0, b0 + block)
        part = kv_state.KVStream(
            stream.positions[sl],
            stream.seq_ids[sl],
            stream.v_trans,
            stream.k_types,
            stream.v_types,
            [k[sl] for k in stream.k],
            [v[sl] for v in stream.v],
        )
        t0 = time.perf_counter()
        eb = EncodedBlock.seal(kv_state.SeqState(0, [[part]]), policy, n_head_kv)
        tq += time.perf_counter() - t0
        nbytes += eb.nbytes
        mix.update(eb.mix)
        t0 = time.perf_counter()
        blob = eb.to_blob(int(stream.positions[b0]), 0)
        td += time.perf_counter() - t0
        back = kv_state.parse(blob).caches[0][0]
        for L in range(len(ks)):
            ks[L][sl] = back.k[L]
            vs[L][sl] = back.v[L]
    new = kv_state.KVStream(stream.positions, stream.seq_ids, stream.v_trans, stream.k_types, stream.v_types, ks, vs)
    return new, nbytes, tq, td, dict(mix)


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


def _pairs(spec: str | None) -> list[tuple[float, float]]:
    """``"1.2/0.22,1.5/0.25"`` -> [(1.2, 0.22), (1.5, 0.25)]: extra adaptive policies, same run."""
    from localsym.errors import LocalsymError

    out = []
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        try:
            k, v = (float(x) for x in part.split("/"))
        except ValueError:
            raise LocalsymError(f"--sweep takes K/V threshold pairs like 1.2/0.22,1.5/0.25, not {part!r}") from None
        out.append((k, v))
    return out


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model
    from localsym.runtime.engine import Engine, RunOptions

    name = args.model or default_model()
    path = model_store.resolve(name)
    n_pre, n_follow = args.context, args.follow
    sweep = {f"adaptive@{k:g}/{v:g}": (k, v) for k, v in _pairs(args.sweep)}  # bad pairs fail before any work
    with Engine(
        path, RunOptions(n_ctx=n_pre + n_follow + 64, n_seq_max=1, vram=args.vram, n_threads=args.threads)
    ) as eng:
        ctx = eng.ctx
        toks = eng.model.tokenize(stdlib_text((n_pre + n_follow) * 6), add_special=True)
        pre, follow = toks[:n_pre], toks[n_pre : n_pre + n_follow]
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
        result: dict = {
            "model": name,
            "context_tokens": n_pre,
            "follow_tokens": n_follow,
            "block_tokens": args.block,
            "memcpy_gbs": round(memcpy, 3),
            "formats": {},
        }
        roundtrip(stream, kq.QuantPolicy(fixed="q4"), eng.info.n_head_kv, args.block)  # compile / warm
        default = kq.QuantPolicy()
        k_thr = default.k_threshold if args.k_threshold is None else args.k_threshold
        v_thr = default.v_threshold if args.v_threshold is None else args.v_threshold
        for fmt in (*NAMES, *sweep):
            if fmt == "f16":
                nbytes, ppl, qg, dg, mix = f16_bytes, base_ppl, None, None, {}
            else:
                if fmt == "adaptive":
                    policy = kq.QuantPolicy(k_threshold=k_thr, v_threshold=v_thr)
                elif fmt in sweep:
                    policy = kq.QuantPolicy(k_threshold=sweep[fmt][0], v_threshold=sweep[fmt][1])
                else:
                    policy = kq.QuantPolicy(fixed=fmt)
                new, nbytes, tq, td, mix = roundtrip(stream, policy, eng.info.n_head_kv, args.block)
                ppl = perplexity(ctx, kv_state.write(kv_state.SeqState(state.seq_id, [[new]])), n_pre, follow)
                qg, dg = f16_bytes / tq / 1e9, f16_bytes / td / 1e9
            entry = {
                "bytes_per_token": round(nbytes / n_pre, 1),
                "ratio": round(f16_bytes / nbytes, 3),
                "ppl": round(ppl, 4),
                "ppl_ratio": round(ppl / base_ppl, 4),
                "quant_gbs": None if qg is None else round(qg, 3),
                "dequant_gbs": None if dg is None else round(dg, 3),
            }
            if fmt.startswith("adaptive"):
                entry["mix"] = mix
                entry["thresholds"] = [policy.k_threshold, policy.v_threshold]
            result["formats"][fmt] = entry
        # on the Pareto front: no uniform format is at least as small and at least as good
        for name in ("adaptive", *sweep):
            ad = result["formats"][name]
            ad["dominated_by"] = [
                f
                for f in ("q8", "q4", "q3", "q2")
                if result["formats"][f]["ratio"] >= ad["ratio"] and result["formats"][f]["ppl"] <= ad["ppl"]
            ]
        result["adaptive_dominated_by"] = result["formats"]["adaptive"]["dominated_by"]
        result["adaptive_on_front"] = not result["adaptive_dominated_by"]

    def table(r: dict) -> str:
        lines = [
            f"bench quant: {r['model']}, {r['context_tokens']} context tokens in {r['block_tokens']}-token "
            f"blocks, perplexity of the next {r['follow_tokens']}; memcpy {r['memcpy_gbs']:.2f} GB/s",
            f"{'format':<10}{'B/token':>10}{'ratio':>8}{'ppl':>9}{'ppl ratio':>11}"
            f"{'quant GB/s':>12}{'dequant GB/s':>14}",
        ]
        for n, e in r["formats"].items():
            qg = "-" if e["quant_gbs"] is None else f"{e['quant_gbs']:.2f}"
            dg = "-" if e["dequant_gbs"] is None else f"{e['dequant_gbs']:.2f}"
            lines.append(
                f"{n:<10}{e['bytes_per_token']:>10.0f}{e['ratio']:>8.2f}{e['ppl']:>9.3f}"
                f"{e['ppl_ratio']:>11.4f}{qg:>12}{dg:>14}"
            )
        if "mix" in r["formats"].get("adaptive", {}):
            for n, e in r["formats"].items():
                if n.startswith("adaptive"):
                    lines.append(
                        f"{n} {e['thresholds'][0]:g}/{e['thresholds'][1]:g} mix (layer-blocks): "
                        + ", ".join(f"{k} {v}" for k, v in sorted(e["mix"].items()))
                        + (f"; dominated by {', '.join(e['dominated_by'])}" if e["dominated_by"] else "")
                    )
            lines.append(
                "GB/s: f16 bytes per second sealing whole blocks (choosing formats, all layers in one set "
                "of kernel calls) and decoding them into state blobs"
            )
            lines.append(
                f"adaptive on the Pareto front of the uniform formats: {r['adaptive_on_front']}"
                + (f" (dominated by {', '.join(r['adaptive_dominated_by'])})" if r["adaptive_dominated_by"] else "")
            )
        return "\n".join(lines)

    emit(result, args, table)
    return 0
