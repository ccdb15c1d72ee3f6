"""Needle in a codebase: a grid of context lengths x depths over real code (the CPython
standard library sources), with ``SERVICE_TOKEN = "<random>"`` planted, scored on the
model's own completion (exact string). Pages of the haystack are separate documents, so
a cell recomputes only the page holding the needle. Plain llama-cpp-python runs the cells
that fit its native context, in the same run. Prints a table and writes a heatmap PNG."""

from __future__ import annotations

import argparse
import random
import string
import sys
import time
from pathlib import Path
from typing import cast

from localsym.bench import emit, private_home
from localsym.bench.corpus import stdlib_text
from localsym.bench.heatmap import write_png

QUESTION = '\n# The SERVICE_TOKEN assigned in the code above is:\nSERVICE_TOKEN = "'


def _haystack_lines(vocab, n_tokens: int) -> list[tuple[str, int]]:
    """(line, tokens) pairs of stdlib source, at least ``n_tokens`` tokens in all."""
    out, total = [], 0
    for line in stdlib_text(n_tokens * 5).splitlines(keepends=True):
        n = len(vocab.tokenize(line)) if line.strip() else 1
        out.append((line, n))
        total += n
        if total >= n_tokens:
            break
    return out


def _pages(lines: list[tuple[str, int]], length: int, depth: float, needle: str, page: int) -> list[str]:
    """The haystack cut into pages at fixed line boundaries (the same for every depth),
    then the needle inserted into its page: a cell recomputes only that page."""
    kept, total = [], 0
    for line, n in lines:
        if total + n > length:
            break
        kept.append((line, n))
        total += n
    at = int(depth * len(kept))
    pages: list[list[str]] = [[]]
    size = 0
    for i, (line, n) in enumerate(kept):
        if i == at:
            pages[-1].append(needle)
        pages[-1].append(line)
        size += n
        if size >= page:
            pages.append([])
            size = 0
    return ["".join(p) for p in pages if p]


def run(args: argparse.Namespace) -> int:
    from localsym.session import GenParams, RunOptions, Session, SessionConfig, Tokenizer, models

    path = models.resolve(args.model)
    with Tokenizer(str(path)) as vocab:
        native = vocab.n_ctx_train
        lines = _haystack_lines(vocab, max(args.lengths))
    rng = random.Random(args.seed)
    cells = []
    t_start = time.perf_counter()
    with private_home("localsym-bench-needle-"):
        opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads)
        for length in args.lengths:
            for depth in args.depths:
                token = "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(8))
                needle = f'SERVICE_TOKEN = "{token}"\n'
                t0 = time.perf_counter()
                name = f"needle-{length}-{int(depth * 100)}"
                with Session.open(name, str(path), opts, SessionConfig(block_tokens=args.block, system="")) as s:
                    rep = None
                    for j, page in enumerate(_pages(lines, length, depth, needle, args.page)):
                        rep = s.ingest_text(page, f"stdlib-{j:04d}.py", "file", report=rep)
                    assert rep is not None  # every length has at least one page
                    with s.ask(QUESTION, GenParams(max_tokens=12), raw=True) as turn:
                        answer = turn.text()
                    cells.append(
                        {
                            "length": length,
                            "depth": depth,
                            "token": token,
                            "answer": answer,
                            "correct": answer.startswith(token),
                            "select_ms": turn.stats.select_ms,
                            "computed_blocks": rep.computed_blocks,
                            "seconds": round(time.perf_counter() - t0, 1),
                        }
                    )
                print(
                    f"  {length:>6} tokens, depth {depth:.1f}: {'ok  ' if cells[-1]['correct'] else 'MISS'} "
                    f"{answer!r} ({cells[-1]['seconds']}s)",
                    file=sys.stderr,
                )
    ours_s = time.perf_counter() - t_start
    base = _baseline(path, native, lines, cells, args) if args.baseline_trials else []
    sel = sorted(c["select_ms"] for c in cells)
    result = {
        "model": args.model,
        "native_context": native,
        "lengths": args.lengths,
        "depths": args.depths,
        "accuracy": round(sum(c["correct"] for c in cells) / len(cells), 4),
        "baseline_accuracy": round(sum(b["correct"] for b in base) / len(base), 4) if base else None,
        "per_cell": cells,
        "baseline_cells": base,
        "select_ms_p50": round(sel[len(sel) // 2], 3),
        "select_ms_p99": round(sel[min(len(sel) - 1, int(0.99 * len(sel)))], 3),
        "seconds": round(ours_s, 1),
    }
    grid = [
        [next((float(c["correct"]) for c in cells if c["length"] == L and c["depth"] == d), None) for L in args.lengths]
        for d in args.depths
    ]
    png = Path(args.heatmap)
    write_png(png, grid)
    result["heatmap"] = str(png)

    def table(r: dict) -> str:
        head = "depth \\ tokens" + "".join(f"{L:>8}" for L in r["lengths"])
        rows = [
            f"{d:<14.1f}" + "".join(f"{'  ok' if g else 'miss':>8}" if g is not None else f"{'-':>8}" for g in grid[i])
            for i, d in enumerate(r["depths"])
        ]
        return "\n".join(
            [
                f"bench needle: {r['model']} (native {r['native_context']}), accuracy {r['accuracy']}, "
                f"baseline {r['baseline_accuracy']}, select p50 {r['select_ms_p50']} ms, "
                f"heatmap {r['heatmap']}",
                head,
                *rows,
            ]
        )

    emit(result, args, table)
    return 0


def _baseline(path, native: int, lines, cells, args) -> list[dict]:
    """Plain llama-cpp-python on the cells that fit its native context."""
    from llama_cpp import Llama, llama_types

    from localsym.runtime.bridge import default_threads

    fit = [c for c in cells if c["length"] + 256 <= native][: args.baseline_trials]
    if not fit:
        return []
    threads = args.threads or default_threads()
    llm = Llama(
        model_path=str(path),
        n_ctx=native,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        verbose=False,
    )
    out = []
    try:
        for c in fit:
            t0 = time.perf_counter()
            text = "".join(_pages(lines, c["length"], c["depth"], f'SERVICE_TOKEN = "{c["token"]}"\n', 10**9))
            r = cast(
                llama_types.CreateCompletionResponse,  # not streamed: one response
                llm.create_completion(text + QUESTION, max_tokens=12, temperature=0.0, top_k=1),
            )
            answer = r["choices"][0]["text"]
            out.append(
                {
                    "length": c["length"],
                    "depth": c["depth"],
                    "answer": answer,
                    "correct": answer.startswith(c["token"]),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    finally:
        llm.close()
    return out
