"""The baselines a retrieval bench measures its working sets against, in the same run: BM25
over fixed units of the same text (allowed as many units as the working set held, or as many
tokens), and random at the same k; and the hit rates every such bench reports."""

from __future__ import annotations

import math
import sqlite3
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from localsym.memory import lexical


def bm25(texts: Sequence[str], names: Sequence[str] | None = None) -> Callable[[str, int], list[int]]:
    """A question's ``k`` best units of ``texts`` by BM25 over the lexical signal's own words
    (SQLite FTS5, identifier-split; ``names``: each unit's file name, the path column)."""
    idx = lexical.LexicalIndex(sqlite3.connect(":memory:"), "units")
    for i, text in enumerate(texts):
        idx.add(i, text, names[i] if names is not None else "")

    def top(question: str, k: int) -> list[int]:
        return [i for i, _ in idx.search(lexical.query_terms(question), k)]

    return top


def top_within_tokens(
    top: Callable[[str, int], list[int]], question: str, k: int, sizes: Sequence[int], budget: float
) -> list[int]:
    """The best units that fit ``budget`` tokens together (``sizes``: each unit's tokens):
    the baseline allowed the working set's tokens rather than its count."""
    out: list[int] = []
    used = 0
    for u in top(question, 4 * max(k, 1) + 8):
        if used + sizes[u] > budget:
            break
        out.append(u)
        used += sizes[u]
    return out


def p_random(n: int, m: int, k: int) -> float:
    """Chance that ``k`` of ``n`` units drawn at random include one of ``m``."""
    if m <= 0 or k <= 0:
        return 0.0
    if n - m < k:
        return 1.0
    return 1.0 - math.comb(n - m, k) / math.comb(n, k)


def hit_rates(rows: list[dict]) -> dict[str, Any]:
    """Per-question rows (source_hit, bm25_hit, bm25_tokens_hit, random_p, answer_hit, k,
    ttft_s) summed up."""
    n = max(len(rows), 1)
    return {
        "source_hit": round(sum(r["source_hit"] for r in rows) / n, 4),
        "bm25_hit": round(sum(r["bm25_hit"] for r in rows) / n, 4),
        "bm25_tokens_hit": round(sum(r["bm25_tokens_hit"] for r in rows) / n, 4),
        "random_hit": round(sum(r["random_p"] for r in rows) / n, 4),
        "answer_hit": round(sum(r["answer_hit"] for r in rows) / n, 4),
        "k_mean": round(sum(r["k"] for r in rows) / n, 2),
        "k_max": max((r["k"] for r in rows), default=0),
        "ttft_s_median": round(statistics.median([r["ttft_s"] for r in rows]), 3) if rows else None,
    }
