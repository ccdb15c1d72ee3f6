"""Attention-native block scoring against the FHRR sketch, on the real model: stdlib
source cut into blocks; each question is a snippet of one block; reported, for the sketch
alone, the attention signal alone and the two combined as sessions combine them, where
the snippet's source block ranks (median, top-1, top-8) and what the probe decode costs."""

from __future__ import annotations

import argparse
import time

import numpy as np

from localsym.bench import emit, private_home


def _stats(ranks: list[int]) -> dict:
    r = np.asarray(ranks)
    return {
        "median_rank": float(np.median(r)),
        "top1": round(float(np.mean(r == 0)), 3),
        "top8": round(float(np.mean(r < 8)), 3),
    }


def run(args: argparse.Namespace) -> int:
    from localsym.bench.corpus import stdlib_text
    from localsym.errors import LocalsymError
    from localsym.session import RunOptions, Session, SessionConfig, default_model, models

    path = models.resolve(args.model or default_model())
    rng = np.random.default_rng(args.seed)
    ranks: dict[str, list[int]] = {"sketch": [], "attention": [], "combined": []}
    probe_ms = []
    with private_home("localsym-bench-attention-"):
        cfg = SessionConfig(block_tokens=args.block, system="")
        with Session.open("attention", str(path), RunOptions(n_ctx=2048, vram=args.vram), cfg) as s:
            attn = s.working.attn
            if attn is None:
                raise LocalsymError(f"{path.name}: no attention-native signal (its RoPE is not a plain one)")
            s.ingest_text(stdlib_text(args.tokens * 4), "stdlib.py", "file")
            sel = s.working.selector
            n = len(sel.blocks)
            for b in rng.choice(n, min(args.queries, n), replace=False):
                toks = sel.blocks[b].tokens.tolist()
                i = int(rng.integers(0, max(1, len(toks) - args.snippet)))
                q = toks[i : i + args.snippet]
                t0 = time.perf_counter()
                query = attn.query(q)
                assert query is not None  # the probe ran for this model (attn is not None)
                probe_ms.append((time.perf_counter() - t0) * 1000)
                att, _ = sel.attention(np.arange(n), query)
                ranks["attention"].append(int((att > att[b]).sum()))
                qt = np.asarray(list(dict.fromkeys(q)), np.int64)
                w = np.array([sel.pointers.idf(t) for t in qt.tolist()], np.float32)
                sk = sel.sketches.matrix @ sel.sketches.sketch(qt[w > 0], w[w > 0])
                ranks["sketch"].append(int((sk > sk[b]).sum()))
                order = list(sel.rerank(np.arange(n), sk, query))
                ranks["combined"].append(order.index(b))
            layers = attn.layers
    result = {
        "model": path.name,
        "blocks": n,
        "block_tokens": args.block,
        "queries": len(probe_ms),
        "snippet_tokens": args.snippet,
        "layers": layers,
        "methods": {k: _stats(v) for k, v in ranks.items()},
        "chance_median_rank": (n - 1) / 2,
        "probe_ms_p50": round(float(np.median(probe_ms)), 1),
    }

    def table(r: dict) -> str:
        lines = [
            f"bench attention: {r['model']}, {r['blocks']} blocks x {r['block_tokens']} tokens, "
            f"{r['queries']} snippets of {r['snippet_tokens']} tokens, layers {r['layers']}, "
            f"probe {r['probe_ms_p50']} ms; chance median rank {r['chance_median_rank']}"
        ]
        for k, v in r["methods"].items():
            lines.append(f"  {k:<10} median rank {v['median_rank']:>6}  top-1 {v['top1']:.3f}  top-8 {v['top8']:.3f}")
        return "\n".join(lines)

    emit(result, args, table)
    return 0
