"""Block selection at scale: ~1M tokens of synthetic blocks with planted needles.

Blocks draw tokens from a Zipf law over the vocabulary (like text: a few tokens
everywhere, most rare). Each query is a few tokens of one planted block plus common
tokens. Reported: selection latency on one CPU core (brute force and LSH) and recall@k
of the planted block, and LSH's recall of brute force's top k.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from localsym.bench import emit


def run(args: argparse.Namespace) -> int:
    # "one CPU core" includes BLAS: its thread count is fixed when numpy loads, so the
    # measurement runs in a child process started with one thread everywhere
    if os.environ.get("OPENBLAS_NUM_THREADS") != "1":
        import subprocess
        import sys

        env = dict(
            os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1"
        )
        argv = [
            "--blocks",
            str(args.blocks),
            "--block-tokens",
            str(args.block_tokens),
            "--queries",
            str(args.queries),
            "-k",
            str(args.k),
            "--seed",
            str(args.seed),
        ]
        argv += (["--json"] if args.json else []) + (["--out", args.out] if args.out else [])
        return subprocess.call([sys.executable, "-m", "localsym", "bench", "retrieval", *argv], env=env)
    import numba

    from localsym.memory.index_db import BlockRow
    from localsym.memory.retrieval import Retriever

    numba.set_num_threads(1)
    rng = np.random.default_rng(args.seed)
    vocab, n, L = 49152, args.blocks, args.block_tokens
    ranks = np.arange(1, vocab + 1)
    p = 1.0 / ranks
    p /= p.sum()
    perm = rng.permutation(vocab)
    r = Retriever()
    t0 = time.perf_counter()
    planted = rng.choice(n, size=args.queries, replace=False)
    blocks = []
    for i in range(n):
        toks = perm[rng.choice(vocab, size=L, p=p)].astype(np.int32)
        blocks.append(toks)
        r.add(BlockRow(i, 0, i, f"b{i}", 0, toks, "file", "synthetic"))
    build_s = time.perf_counter() - t0
    common = perm[:50]
    k = args.k
    lat_brute, lat_lsh, lat_cand, lat_select = [], [], [], []
    hit_brute = hit_lsh = hit_cand = hit_select = 0
    overlap, overlap_cand = [], []
    for b in planted:
        # a question: 4 of the planted block's own tokens (its rarest) among common words
        own = blocks[b][np.argsort([r.pointers.df[t] for t in blocks[b].tolist()])[:4]]
        q = np.concatenate([own, rng.choice(common, 8)]).astype(np.int64)
        w = np.array([r.pointers.idf(t) for t in q.tolist()], np.float32)
        qs = r.sketches.sketch(q[w > 0], w[w > 0])
        t = time.perf_counter()
        ids_b, _ = r.sketches.brute(qs, k)
        lat_brute.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids_l, _ = r.search(qs, q[w > 0], k, force="lsh")
        lat_lsh.append(time.perf_counter() - t)
        t = time.perf_counter()
        ids_c, _ = r.search(qs, q[w > 0], k, force="candidates")
        lat_cand.append(time.perf_counter() - t)
        t = time.perf_counter()
        chosen = r.select(q.tolist(), k * L)
        lat_select.append(time.perf_counter() - t)
        hit_brute += int(b in set(ids_b.tolist()))
        hit_lsh += int(b in set(ids_l.tolist()))
        hit_cand += int(b in set(ids_c.tolist()))
        hit_select += int(any(c.id == b for c in chosen))
        overlap.append(len(set(ids_b.tolist()) & set(ids_l.tolist())) / k)
        overlap_cand.append(len(set(ids_b.tolist()) & set(ids_c.tolist())) / k)
    ms = lambda xs, q: round(float(np.percentile(xs, q)) * 1000, 3)  # noqa: E731
    result = {
        "blocks": n,
        "block_tokens": L,
        "tokens": n * L,
        "queries": len(planted),
        "k": k,
        "build_s": round(build_s, 2),
        "dim": r.sketches.dim,
        "lsh_tables": r.sketches.tables,
        "lsh_bits": r.sketches.bits,
        "brute_ms_p50": ms(lat_brute, 50),
        "brute_ms_p99": ms(lat_brute, 99),
        "lsh_ms_p50": ms(lat_lsh, 50),
        "lsh_ms_p99": ms(lat_lsh, 99),
        "candidates_ms_p50": ms(lat_cand, 50),
        "candidates_ms_p99": ms(lat_cand, 99),
        "select_ms_p50": ms(lat_select, 50),
        "select_ms_p99": ms(lat_select, 99),
        "recall_at_k_brute": round(hit_brute / len(planted), 4),
        "recall_at_k_lsh": round(hit_lsh / len(planted), 4),
        "lsh_recall_of_brute_at_k": round(float(np.mean(overlap)), 4),
        "recall_at_k_candidates": round(hit_cand / len(planted), 4),
        "candidates_recall_of_brute_at_k": round(float(np.mean(overlap_cand)), 4),
        "recall_select": round(hit_select / len(planted), 4),
        "threads": 1,
        "cpu_count": os.cpu_count(),
    }

    def table(x: dict) -> str:
        return "\n".join(
            [
                f"bench retrieval: {x['blocks']} blocks x {x['block_tokens']} tokens = {x['tokens']} tokens, "
                f"{x['queries']} planted queries, k={x['k']}, one core",
                f"  sketch build {x['build_s']} s (D={x['dim']}, LSH {x['lsh_tables']} tables x {x['lsh_bits']} bits)",
                f"  brute force  p50 {x['brute_ms_p50']} ms  p99 {x['brute_ms_p99']} ms  "
                f"recall@k {x['recall_at_k_brute']}",
                f"  LSH          p50 {x['lsh_ms_p50']} ms  p99 {x['lsh_ms_p99']} ms  recall@k {x['recall_at_k_lsh']}  "
                f"(of brute force: {x['lsh_recall_of_brute_at_k']})",
                f"  LSH + token postings  p50 {x['candidates_ms_p50']} ms  p99 {x['candidates_ms_p99']} ms  "
                f"recall@k {x['recall_at_k_candidates']}  (of brute force: {x['candidates_recall_of_brute_at_k']})",
                f"  select (pointer index + sketches)  p50 {x['select_ms_p50']} ms  p99 {x['select_ms_p99']} ms  "
                f"planted block selected {x['recall_select']}",
            ]
        )

    emit(result, args, table)
    return 0
