"""KV quantization: bytes, perplexity and kernel speed for F16, Q8, Q4, Q3, Q2 and adaptive.

The prefix of a real text (CPython stdlib sources) is decoded once; its KV blob is cut into
blocks, each block round-tripped through a format, written back into llama.cpp, and the
perplexity of the text that follows is measured against the untouched F16 blob, same run.
This is done for several disjoint windows of the text and pooled over all scored tokens: one
window of 256 scored tokens ranked formats whose perplexities differ by 1% by the luck of the
window. The mean KL divergence from F16's next-token distribution is reported beside it
(llama.cpp's ``--kl-divergence``): it has no such sign-cancelling noise.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from localsym.bench import emit
from localsym.bench.corpus import stdlib_text
from localsym.memory import kv_quant as kq
from localsym.memory.encoded_block import EncodedBlock
from localsym.runtime import kv_state

NAMES = ("f16", "q8", "q4", "q3", "q2", "adaptive")


def log_probs(ctx, blob: bytes | bytearray, start: int, tokens: list[int]) -> np.ndarray:
    """[len(tokens) - 1, vocab] float32 log-probabilities of each next token, given ``blob``."""
    ctx.clear()
    ctx.state_seq_set(0, blob)
    parts = []
    for i in range(0, len(tokens), ctx.n_batch):  # llama.cpp keeps one batch's logits
        piece = tokens[i : i + ctx.n_batch]
        ctx.decode(piece, start + i, 0, logits="all")
        lg = ctx.logits_all(len(piece)).astype(np.float64)
        mx = lg.max(axis=1, keepdims=True)
        parts.append((lg - (np.log(np.exp(lg - mx).sum(axis=1, keepdims=True)) + mx)).astype(np.float32))
    return np.concatenate(parts)[: len(tokens) - 1]


def scores(lp: np.ndarray, tokens: list[int], base: np.ndarray | None) -> tuple[float, float]:
    """(summed negative log-likelihood of ``tokens[1:]``, summed KL(base || lp) over positions)."""
    n = len(tokens) - 1
    nll = -float(lp[np.arange(n), tokens[1:]].astype(np.float64).sum())
    if base is None:
        return nll, 0.0
    kl = 0.0
    for i in range(0, n, 64):  # a few MB at a time, not a vocab-wide float64 copy of the lot
        b = base[i : i + 64].astype(np.float64)
        kl += float((np.exp(b) * (b - lp[i : i + 64])).sum())
    return nll, max(kl, 0.0)


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


@dataclass
class _Tally:
    """One format's sums over the windows."""

    bytes: int = 0
    nll: float = 0.0
    kl: float = 0.0
    tq: float = 0.0
    td: float = 0.0
    mix: Counter[str] = field(default_factory=Counter)
    win: list[float] = field(default_factory=list)


def _windows(eng, n_pre: int, n_follow: int, n_win: int) -> list[list[int]]:
    """``n_win`` disjoint stretches of stdlib source, each ``n_pre + n_follow`` tokens, each
    starting as a document does (BOS where the model adds one)."""
    from localsym.errors import LocalsymError

    lead = [eng.model.bos] if eng.model.add_bos and eng.model.bos >= 0 else []
    span = n_pre + n_follow - len(lead)
    toks = eng.model.tokenize(stdlib_text((n_pre + n_follow) * n_win * 6), add_special=False)
    if len(toks) < span * n_win:
        raise LocalsymError(f"the stdlib corpus has {len(toks)} tokens, fewer than {n_win} windows of {span}")
    return [lead + toks[w * span : (w + 1) * span] for w in range(n_win)]


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model
    from localsym.errors import LocalsymError
    from localsym.runtime.engine import Engine, RunOptions

    name = args.model or default_model()
    path = model_store.resolve(name)
    n_pre, n_follow, n_win = args.context, args.follow, args.windows
    if n_win < 1:
        raise LocalsymError("--windows takes a count of at least 1")
    sweep = {f"adaptive@{k:g}/{v:g}": (k, v) for k, v in _pairs(args.sweep)}  # bad pairs fail before any work
    default = kq.QuantPolicy()
    k_thr = default.k_threshold if args.k_threshold is None else args.k_threshold
    v_thr = default.v_threshold if args.v_threshold is None else args.v_threshold
    policies: dict[str, kq.QuantPolicy | None] = {"f16": None}
    policies.update({f: kq.QuantPolicy(fixed=f) for f in NAMES if f not in ("f16", "adaptive")})
    policies["adaptive"] = kq.QuantPolicy(k_threshold=k_thr, v_threshold=v_thr)
    policies.update({f: kq.QuantPolicy(k_threshold=k, v_threshold=v) for f, (k, v) in sweep.items()})
    with Engine(
        path, RunOptions(n_ctx=n_pre + n_follow + 64, n_seq_max=1, vram=args.vram, n_threads=args.threads)
    ) as eng:
        ctx = eng.ctx
        if eng.info.sliding_window:
            raise LocalsymError("bench quant measures single-cache models (not sliding-window ones)")
        acc = {f: _Tally() for f in policies}
        memcpy, n_scored = 0.0, 0
        for w, toks in enumerate(_windows(eng, n_pre, n_follow, n_win)):
            pre, follow = toks[:n_pre], toks[n_pre:]
            ctx.clear()
            ctx.decode(pre, 0, 0, logits="none")
            blob = ctx.state_seq_get(0)
            state = kv_state.parse(blob, 1)
            stream = state.caches[0][0]
            nb = sum(k.nbytes + v.nbytes for k, v in zip(stream.k, stream.v))
            base = log_probs(ctx, blob, n_pre, follow)
            b_nll = scores(base, follow, None)[0]
            n_scored += len(follow) - 1
            if w == 0:
                memcpy = memcpy_speed(stream)
                roundtrip(stream, kq.QuantPolicy(fixed="q4"), eng.info.n_head_kv, args.block)  # compile / warm
            for fmt, policy in policies.items():
                a = acc[fmt]
                if policy is None:
                    a.bytes += nb
                    a.nll += b_nll
                    a.win.append(1.0)
                    continue
                new, nbytes, tq, td, mix = roundtrip(stream, policy, eng.info.n_head_kv, args.block)
                lp = log_probs(ctx, kv_state.write(kv_state.SeqState(state.seq_id, [[new]])), n_pre, follow)
                nll, kl = scores(lp, follow, base)
                del lp
                a.bytes += nbytes
                a.nll += nll
                a.kl += kl
                a.tq += tq
                a.td += td
                a.mix.update(mix)
                a.win.append(round(math.exp((nll - b_nll) / (len(follow) - 1)), 4))
            del base
        f16_bytes = acc["f16"].bytes
        base_ppl = math.exp(acc["f16"].nll / n_scored)
        result: dict = {
            "model": name,
            "context_tokens": n_pre,
            "follow_tokens": n_follow,
            "block_tokens": args.block,
            "windows": n_win,
            "scored_tokens": n_scored,
            "memcpy_gbs": round(memcpy, 3),
            "formats": {},
        }
        for fmt, policy in policies.items():
            a = acc[fmt]
            ppl = math.exp(a.nll / n_scored)
            entry = {
                "bytes_per_token": round(a.bytes / (n_pre * n_win), 1),
                "ratio": round(f16_bytes / a.bytes, 3),
                "ppl": round(ppl, 4),
                "ppl_ratio": round(ppl / base_ppl, 4),
                "kld": round(a.kl / n_scored, 5),
                "ppl_ratio_windows": a.win,
                "quant_gbs": None if policy is None else round(f16_bytes / a.tq / 1e9, 3),
                "dequant_gbs": None if policy is None else round(f16_bytes / a.td / 1e9, 3),
            }
            if fmt.startswith("adaptive"):
                assert policy is not None
                entry["mix"] = dict(a.mix)
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
            f"bench quant: {r['model']}, {r['windows']} windows of {r['context_tokens']} context tokens in "
            f"{r['block_tokens']}-token blocks, perplexity of the next {r['follow_tokens']} "
            f"({r['scored_tokens']} scored); memcpy {r['memcpy_gbs']:.2f} GB/s",
            f"{'format':<10}{'B/token':>10}{'ratio':>8}{'ppl':>9}{'ppl ratio':>11}{'KLD':>9}"
            f"{'quant GB/s':>12}{'dequant GB/s':>14}",
        ]
        for n, e in r["formats"].items():
            qg = "-" if e["quant_gbs"] is None else f"{e['quant_gbs']:.2f}"
            dg = "-" if e["dequant_gbs"] is None else f"{e['dequant_gbs']:.2f}"
            lines.append(
                f"{n:<10}{e['bytes_per_token']:>10.0f}{e['ratio']:>8.2f}{e['ppl']:>9.3f}"
                f"{e['ppl_ratio']:>11.4f}{e['kld']:>9.4f}{qg:>12}{dg:>14}"
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
