"""Several signals' candidate blocks, one ranking, and where to stop taking blocks.

Each signal (lexical BM25, semantic vectors, the FHRR sketch, attention keys, rare tokens)
scores its own candidates on its own scale. Scores are divided by the signal's best
(max-normalised CombSUM; a signal with a fixed scale of its own, ``ABSOLUTE``, is not),
weighted and added: unlike reciprocal-rank fusion this keeps *how far* a
block leads, which is what the working set's size is read from. A block a strong signal
puts far ahead comes alone; a question whose candidates score alike brings several, up to
a cap (``bench code`` measured both fusions and the margin; see the README).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# how much each signal counts: fitted on `localsym bench code` (questions in words over real
# code) with the needle benches unchanged (their needles do not go through fusion). The
# sketch speaks only when the lexical signal finds nothing (retrieval.py). Attention (the
# question's own queries against each block's key centroids) cost bench code's click
# questions 2 of 20 at 0.15 and 1 at 0.05 (SmolLM2: a weak signal, bench attention), so it is
# off, and its probe decode is skipped; a stronger model may earn it back
# The semantic signal (static word embeddings) finds what shares meaning but no word with
# the question; fused at 0.5 it took bench code's source hit from 0.825 to 0.90 (ranking
# alone over 135 questions: BM25 0.867, semantic 0.704, fused at 0.3-0.7 0.88-0.92)
WEIGHTS = {"lexical": 1.0, "semantic": 0.5, "sketch": 0.35, "attention": 0.0, "rare": 0.25}
# signals whose scores are on a scale of their own (0-1), not divided by their best
ABSOLUTE = frozenset({"semantic"})
MARGIN = 0.3  # a block comes along while its fused score is at least this share of the best
K_MAX = 8  # blocks chosen by the fused signals, at most (needles come on top)
K_MIN = 1


Signal = tuple[Sequence[int] | np.ndarray, Sequence[float] | np.ndarray]  # (blocks, scores)


@dataclass
class Fused:
    order: list[int] = field(default_factory=list)  # block numbers, best first
    scores: dict[int, float] = field(default_factory=dict)  # fused, the best = 1
    signal: dict[int, str] = field(default_factory=dict)  # the signal that weighed most for each


def fuse(
    signals: Mapping[str, Signal],
    weights: Mapping[str, float] = WEIGHTS,
    exclude: set[int] | None = None,
) -> Fused:
    """Fuse ``signals`` (name -> (blocks, scores), higher better); ``exclude``d blocks are
    left out (needles taken already, lookalikes)."""
    total: dict[int, float] = {}
    parts: dict[int, dict[str, float]] = {}
    for name, (ids, scores) in signals.items():
        w = weights.get(name, 0.0)
        if w <= 0 or not len(ids):
            continue
        top = 1.0 if name in ABSOLUTE else max(float(s) for s in scores)
        if top <= 0:
            continue
        for b, s in zip(ids, scores):
            b = int(b)
            v = w * max(float(s), 0.0) / top
            total[b] = total.get(b, 0.0) + v
            parts.setdefault(b, {})[name] = v
    # the best is measured over every block, the excluded ones too: beside a needle the
    # question found (taken already), a block that scores a tenth of it is no match, even
    # if it is the best of the rest
    best = max(total.values(), default=1.0) or 1.0
    order = sorted((b for b in total if not (exclude and b in exclude)), key=lambda b: (-total[b], b))
    return Fused(
        order,
        {b: total[b] / best for b in order},
        {b: max(parts[b], key=lambda n: parts[b][n]) for b in order},
    )


def cut(f: Fused, k_max: int = K_MAX, margin: float = MARGIN, k_min: int = K_MIN) -> list[int]:
    """The blocks worth bringing: those within ``margin`` of the best, ``k_min`` to ``k_max``."""
    out: list[int] = []
    for b in f.order[:k_max]:
        if len(out) >= k_min and f.scores[b] < margin:
            break
        out.append(b)
    return out
