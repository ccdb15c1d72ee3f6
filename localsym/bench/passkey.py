"""Passkey retrieval (the Landmark-attention format), scored on the model's own answer.

The haystack is cut into pages (documents) of ``--page`` tokens, so a trial changes only
the page that holds the needle; every other page's blocks come from the block cache, as a
user's unchanged files would. The same run measures plain llama-cpp-python at the model's
native context (the haystack cut to fit, the needle at the same relative depth).
"""

from __future__ import annotations

import argparse
import random
import re
import statistics
import sys
import time
from typing import cast

from localsym.bench import emit, private_home

INTRO = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there.\n"
)
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.\n"
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "What is the pass key? Answer with the number only."


def _pages(n_filler: int, per_page: int, depth: float, key: str) -> list[str]:
    """The haystack as pages of filler lines, the needle after line ``depth * n_filler``."""
    lines = [FILLER] * n_filler
    at = int(depth * n_filler)
    lines[at] = NEEDLE.format(key=key) + FILLER
    pages = ["".join(lines[i : i + per_page]) for i in range(0, n_filler, per_page)]
    pages[0] = INTRO + pages[0]
    return pages


def _found(answer: str, key: str) -> bool:
    return key in re.findall(r"\d+", answer)


def run(args: argparse.Namespace) -> int:
    from localsym.session import GenParams, RunOptions, Session, SessionConfig, Tokenizer, default_model, models

    name = args.model or default_model()
    path = models.resolve(name)
    with Tokenizer(str(path)) as vocab:
        per_line = len(vocab.tokenize(FILLER))
        native = vocab.n_ctx_train
    n_filler = args.tokens // per_line
    per_page = max(1, args.page // per_line)
    rng = random.Random(args.seed)
    trials = [(str(rng.randint(10000, 99999)), rng.uniform(0.05, 0.95)) for _ in range(args.trials)]
    cells: list[dict] = []
    select_ms = []
    t_start = time.perf_counter()
    with private_home("localsym-bench-passkey-"):  # the first trial pays for the haystack
        opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads)
        for i, (key, depth) in enumerate(trials):
            t0 = time.perf_counter()
            cfg = SessionConfig(block_tokens=args.block, warm_mb=256)
            with Session.open(f"passkey-{i}", str(path), opts, cfg) as s:
                rep = None
                for j, page in enumerate(_pages(n_filler, per_page, depth, key)):
                    rep = s.ingest_text(page, f"page-{j:04d}", "file", report=rep)
                assert rep is not None  # the haystack has at least one page
                with s.ask(QUESTION, GenParams(max_tokens=16)) as turn:
                    answer = turn.text()
                select_ms.append(turn.stats.select_ms)
                cells.append(
                    {
                        "trial": i,
                        "depth": round(depth, 3),
                        "key": key,
                        "answer": answer.strip(),
                        "correct": _found(answer, key),
                        "tokens": s.total_tokens,
                        "computed_blocks": rep.computed_blocks,
                        "reused_blocks": rep.reused_blocks,
                        "reinjected_blocks": turn.stats.reinjected_blocks,
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
            print(
                f"  trial {i}: depth {depth:.2f} key {key} -> {answer.strip()!r} "
                f"({cells[-1]['seconds']}s, {rep.computed_blocks} blocks computed)",
                file=sys.stderr,
            )
    ours_s = time.perf_counter() - t_start
    base = (
        _baseline(path, native, per_line, trials[: args.baseline_trials], args.threads) if args.baseline_trials else []
    )
    result = {
        "model": name,
        "tokens": args.tokens,
        "native_context": native,
        "trials": len(cells),
        "accuracy": round(sum(c["correct"] for c in cells) / len(cells), 4),
        "baseline_accuracy": round(sum(b["correct"] for b in base) / len(base), 4) if base else None,
        "baseline_tokens": base[0]["tokens"] if base else None,
        "select_ms_p50": round(statistics.median(select_ms), 3),
        "select_ms_p99": round(max(select_ms), 3),
        "seconds": round(ours_s, 1),
        "baseline_seconds": round(sum(b["seconds"] for b in base), 1),
        "per_cell": cells,
        "baseline_cells": base,
    }

    def table(r: dict) -> str:
        return "\n".join(
            [
                f"bench passkey: {r['model']}, {r['tokens']} tokens ({r['tokens'] / r['native_context']:.1f}x native), "
                f"{r['trials']} trials in {r['seconds']} s",
                f"  localsym accuracy {r['accuracy']:.2f}   selection p50 {r['select_ms_p50']} ms",
                f"  llama-cpp-python at {r['baseline_tokens']} tokens: accuracy {r['baseline_accuracy']} "
                f"({len(r['baseline_cells'])} trials, {r['baseline_seconds']} s)",
            ]
            + [
                f"  trial {c['trial']}: depth {c['depth']:.2f} {'ok ' if c['correct'] else 'MISS'} {c['answer']!r}"
                for c in r["per_cell"]
            ]
        )

    emit(result, args, table)
    return 0


def _baseline(path, native: int, per_line: int, trials, threads) -> list[dict]:
    """Plain llama-cpp-python with the haystack cut to its native context."""
    from llama_cpp import Llama, llama_types

    from localsym.runtime.bridge import default_threads

    n_filler = (native - 256) // per_line
    llm = Llama(
        model_path=str(path),
        n_ctx=native,
        n_batch=512,
        n_threads=threads or default_threads(),
        n_threads_batch=threads or default_threads(),
        flash_attn=True,
        verbose=False,
    )
    out = []
    try:
        for key, depth in trials:
            t0 = time.perf_counter()
            text = "".join(_pages(n_filler, n_filler, depth, key))
            r = cast(
                llama_types.CreateChatCompletionResponse,  # not streamed: one response
                llm.create_chat_completion(
                    [{"role": "user", "content": text + "\n" + QUESTION}], max_tokens=16, temperature=0.0, top_k=1
                ),
            )
            answer = r["choices"][0]["message"]["content"] or ""
            out.append(
                {
                    "depth": round(depth, 3),
                    "key": key,
                    "answer": answer.strip(),
                    "correct": _found(answer, key),
                    "tokens": r["usage"]["prompt_tokens"],
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    finally:
        llm.close()
    return out
