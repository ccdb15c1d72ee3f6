"""Opening a big session: seconds to open it and to its first answer token, by size.

Each session holds one real document (report lines with a planted key, ingested through
the session, so its blocks have real KV) and synthetic document blocks up to its size:
Zipf-distributed tokens (like text), their sketches and postings written straight into the
session's index (the floors the session itself writes at ingest), each borrowing the KV
block of a real block so that restoring it is real work. Then, in a fresh process per
measurement as `localsym ask` runs, the public ``localsym.session`` API opens the session
and asks for the key: ``open_s`` is ``Session.open``, ``ttft_s`` the turn's time to its
first token (selection over every block, restoring the working set, the prefill). The
baseline, what every open cost before the index was persisted, is the measured time to
index one block from its tokens times the session's blocks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

from localsym.bench import emit, private_home

FACT = "The deploy key for the staging server is KX-4471-QZ."
QUESTION = "What is the deploy key for the staging server?"
POOL = 256  # distinct synthetic blocks (their sketches computed once), repeated to the size


def _child(name: str, n_ctx: int, vram: str | None, max_tokens: int) -> dict:
    from localsym.session import GenParams, RunOptions, Session

    t0 = time.perf_counter()
    with Session.open(name, opts=RunOptions(n_ctx=n_ctx, vram=vram)) as s:
        open_s = time.perf_counter() - t0
        with s.ask(QUESTION, GenParams(max_tokens=max_tokens)) as turn:
            answer = turn.text()
        st = turn.stats
    return {
        "open_s": open_s,
        "ttft_s": st.ttft_s,
        "select_ms": st.select_ms,
        "found": "KX-4471-QZ" in answer,
        "blocks": st.blocks_total,
        # the whole process: model, contexts, the index and sketches opened, the answer
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _build(name: str, size: int, model: str | None, n_ctx: int, vram: str | None, seed: int) -> dict:
    """A session of ``size`` tokens: the real document, then synthetic blocks."""
    from localsym.memory.retrieval import StoredRetriever
    from localsym.session import RunOptions, Session

    with Session.open(name, model, RunOptions(n_ctx=n_ctx, vram=vram)) as s:
        lines = [f"Line {i}: the weekly report lists routine maintenance and nothing unusual." for i in range(96)]
        lines.insert(48, FACT)
        s.ingest_text("Project notes.\n" + "\n".join(lines) + "\n", "real/notes.txt", "file")
        real = s.docs
        B = s.config.block_tokens
        sel = s.working.selector
        assert isinstance(sel, StoredRetriever)
        rng = np.random.default_rng(seed)
        vocab = s.engine.model.n_vocab
        p = 1.0 / np.arange(1, vocab + 1)
        p /= p.sum()
        perm = rng.permutation(vocab)
        pool = [perm[rng.choice(vocab, B, p=p)].astype(np.int32) for _ in range(POOL)]
        t0 = time.perf_counter()
        vecs = [sel.sketches.block_vector(t) for t in pool]
        per_sketch = (time.perf_counter() - t0) / POOL
        n_synth = max(0, (size - s.total_tokens) // B)
        per_file = 16  # blocks per synthetic file
        t0 = time.perf_counter()
        db = s.db
        for f in range(0, n_synth, per_file):
            n = min(per_file, n_synth - f)
            with db.transaction():
                doc = db.add_doc(f"synthetic/{f // per_file}.txt", "file", f"synthetic-{f}", n * B)
                where = sel.file.append([vecs[(f + j) % POOL] for j in range(n)])
                for j in range(n):
                    k = (f + j) % POOL
                    like = real[(f + j) % len(real)]  # its KV: a real block's
                    span = (1 + 40 * j, 40 + 40 * j)
                    db.add_block(doc, j, like.key, like.pos0, pool[k].tolist(), like.attn, where[j], span, True)
                db.complete_doc(doc, f"synthetic/{f // per_file}.txt", "file")
        write_s = time.perf_counter() - t0
        n_blocks = len(real) + n_synth
        db.set("total_tokens", s.total_tokens + n_synth * B)
    return {"blocks": n_blocks, "sketch_s_per_block": per_sketch, "write_s": write_s}


def run(args: argparse.Namespace) -> int:
    import localsym.bench as package

    # importing this module made ``open`` an attribute of the package, whose ``emit`` calls
    # the builtin ``open``: give the name back
    package.__dict__.pop("open", None)
    if args.child:
        print(json.dumps(_child(args.child, args.ctx, args.vram, args.max_tokens)))
        return 0
    from localsym import model_store
    from localsym.catalog import default_model

    model = args.model or default_model()
    path = str(model_store.resolve(model))
    sizes = args.sizes
    result: dict = {
        "model": model,
        "n_ctx": args.ctx,
        "reps": args.reps,
        "open_s": {},
        "ttft_s": {},
        "rss_mb": {},
        "sessions": {},
    }
    with private_home("localsym-bench-open-") as home:
        for size in sizes:
            built = _build(f"open-{size}", size, path, args.ctx, args.vram, args.seed)
            runs = []
            for _ in range(args.reps):
                argv = [sys.executable, "-m", "localsym", "bench", "open", "--child", f"open-{size}"]
                argv += ["--ctx", str(args.ctx), "--max-tokens", str(args.max_tokens)]
                argv += ["--vram", args.vram] if args.vram else []
                r = subprocess.run(argv, capture_output=True, text=True, env={**_env(), "LOCALSYM_HOME": home})
                if r.returncode != 0:
                    raise SystemExit(f"bench open: the measuring process failed: {r.stderr.strip()[-400:]}")
                runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
            key = str(size)
            result["open_s"][key] = round(statistics.median(x["open_s"] for x in runs), 3)
            result["ttft_s"][key] = round(statistics.median(x["ttft_s"] for x in runs), 3)
            result["rss_mb"][key] = round(statistics.median(x["rss_mb"] for x in runs), 1)
            result["sessions"][key] = {
                "blocks": built["blocks"],
                "select_ms": round(statistics.median(x["select_ms"] for x in runs), 1),
                "found": all(x["found"] for x in runs),
                "setup_write_s": round(built["write_s"], 1),
                # before the index was persisted every open first indexed every block again
                "before_open_s_estimate": round(built["blocks"] * built["sketch_s_per_block"], 2),
            }
    lo, hi = str(min(sizes)), str(max(sizes))
    result["ttft_ratio_largest_vs_smallest"] = round(result["ttft_s"][hi] / max(result["ttft_s"][lo], 1e-9), 3)
    result["rss_ratio_largest_vs_smallest"] = round(result["rss_mb"][hi] / result["rss_mb"][lo], 3)

    def table(r: dict) -> str:
        rows = [
            f"bench open: {r['model']}, -c {r['n_ctx']}, median of {r['reps']} fresh processes",
            f"{'tokens':>10}{'blocks':>8}{'open s':>9}{'ttft s':>9}{'RSS MB':>9}{'select ms':>11}{'found':>7}"
            f"{'before open s (est.)':>22}",
        ]
        for k in r["open_s"]:
            ss = r["sessions"][k]
            rows.append(
                f"{k:>10}{ss['blocks']:>8}{r['open_s'][k]:>9.3f}{r['ttft_s'][k]:>9.3f}{r['rss_mb'][k]:>9.1f}"
                f"{ss['select_ms']:>11.1f}"
                f"{ss['found']!s:>7}{ss['before_open_s_estimate']:>22.2f}"
            )
        rows.append(
            f"ttft at {hi} vs {lo} tokens: {r['ttft_ratio_largest_vs_smallest']:.2f}x, "
            f"peak RSS {r['rss_ratio_largest_vs_smallest']:.2f}x"
        )
        return "\n".join(rows)

    emit(result, args, table)
    return 0


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
