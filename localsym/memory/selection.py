"""Which stored blocks join the working set for a question.

An interface, and the first policy behind it: keyword overlap weighted by rarity, with
recency as the tie-breaker. The retrieval work (sketches, pointer index, LSH) replaces
the policy, not the interface.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from localsym.memory.index_db import BlockRow


class Selector(Protocol):
    def add(self, block: BlockRow) -> None: ...

    def select(self, question: Sequence[int], budget_tokens: int) -> list[BlockRow]: ...


class KeywordRecencySelector:
    """Score = sum of idf of the question's tokens found in a block (each token once).

    Tokens that appear in most blocks (punctuation, common words) weigh nearly nothing, so
    identifiers and numbers decide. Ties go to the most recent blocks.
    """

    def __init__(self, min_idf: float = 1.0) -> None:
        self.blocks: list[BlockRow] = []
        self.postings: dict[int, set[int]] = defaultdict(set)
        self.min_idf = min_idf

    def add(self, block: BlockRow) -> None:
        i = len(self.blocks)
        self.blocks.append(block)
        for t in np.unique(block.tokens).tolist():
            self.postings[t].add(i)

    def idf(self, token: int) -> float:
        df = len(self.postings.get(token, ()))
        return math.log((len(self.blocks) + 1) / (df + 0.5)) if df else 0.0

    def scores(self, question: Sequence[int]) -> dict[int, float]:
        out: dict[int, float] = defaultdict(float)
        for t in set(question):
            w = self.idf(t)
            if w < self.min_idf:
                continue
            for i in self.postings.get(t, ()):
                out[i] += w
        return out

    def select(self, question: Sequence[int], budget_tokens: int) -> list[BlockRow]:
        scored = self.scores(question)
        order = sorted(range(len(self.blocks)), key=lambda i: (-scored.get(i, 0.0), -i))
        chosen, used = [], 0
        for i in order:
            n = self.blocks[i].n_tokens
            if used + n > budget_tokens:
                continue
            chosen.append(i)
            used += n
        return [self.blocks[i] for i in sorted(chosen)]  # original order
