"""Experts during chat: watch routing, learn the Markov predictor online, prefetch the
predicted experts of the next token, and keep what was learned per model across sessions.

Routing is read by the bridge's compiled tap and handed over once per decode call, so the
Python work (learning, predicting, advising the kernel) happens between tokens, not
inside the graph: the prefetch for token t+1 is issued as soon as token t is decoded,
a whole token ahead of the first layer that needs it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from localsym import paths
from localsym.experts.predictor import MarkovPredictor
from localsym.experts.prefetch import Prefetcher
from localsym.experts.traces import fold
from localsym.runtime.bridge import RoutingTap
from localsym.runtime.model_info import ModelInfo


def learned_store(model_id: str) -> Path:
    """Where a model's learned routing lives: one file per model, shared by its sessions."""
    return paths.data_dir() / "experts" / f"{model_id[:24]}.npz"


def learned_usage(model_id: str, n_layer: int, n_expert: int) -> np.ndarray | None:
    """The model's learned per-(layer, expert) routing frequencies, if any were learned."""
    store = learned_store(model_id)
    if not store.exists():
        return None
    freq = MarkovPredictor.load(store, n_layer, n_expert).freq
    return freq if freq.shape == (n_layer, n_expert) else None


class LiveExperts:
    def __init__(
        self, path: Path, info: ModelInfo, store: Path | None, prefetch_bytes: int = 1 << 30, prefetch: bool = True
    ) -> None:
        self.n_layer, self.n_expert, self.n_used = info.n_layer, info.n_expert, info.n_expert_used
        self.store = store
        self.pred = (
            MarkovPredictor.load(store, info.n_layer, info.n_expert)
            if store
            else MarkovPredictor(info.n_layer, info.n_expert)
        )
        self.observer = RoutingTap(info.n_layer, info.n_expert_used, self._on_decode)
        self.prefetch = Prefetcher(path, prefetch_bytes) if prefetch else None
        self._prev_token: list[np.ndarray | None] = [None] * info.n_layer
        self._guess: list[set[int] | None] = [None] * info.n_layer
        self.predicted = self.hits = self.tokens = 0
        self.use_count = np.zeros((info.n_layer, info.n_expert), np.int64)

    def _on_decode(self, per_layer: list[np.ndarray]) -> None:
        block = fold(per_layer, self.n_used)
        if not len(block):
            return
        self._score(block[0])
        for row in block:
            self._learn(row)
        self.tokens += len(block)
        self._predict_next()

    def _score(self, row: np.ndarray) -> None:
        # the guesses made after the previous call were for this call's first token
        for layer, guess in enumerate(self._guess):
            ex = row[layer]
            if guess is not None and ex[0] >= 0:
                self.predicted += len(ex)
                self.hits += len(guess & set(ex.tolist()))

    def _learn(self, row: np.ndarray) -> None:
        prev = None
        for layer in range(self.n_layer):
            ex = row[layer]
            if ex[0] < 0:  # a layer that kept no row for this token
                prev = None
                continue
            self.pred.learn(layer, ex, prev, self._prev_token[layer])
            self.use_count[layer, ex] += 1
            self._prev_token[layer] = prev = ex

    def _predict_next(self) -> None:
        prev = None
        for layer in range(self.n_layer):
            g = self.pred.predict(layer, prev, self._prev_token[layer], self.n_used)
            self._guess[layer] = set(g.tolist())
            if self.prefetch is not None:
                self.prefetch.willneed(layer, g)
            prev = g

    @property
    def hit_rate(self) -> float:
        return self.hits / self.predicted if self.predicted else 0.0

    def close(self) -> None:
        if self.store is not None:
            self.pred.save(self.store)
        if self.prefetch is not None:
            self.prefetch.close()
