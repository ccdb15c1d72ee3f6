"""Experts during chat: watch routing, learn the Markov predictor online, prefetch the
next layer's predicted experts, and keep what was learned per model across sessions."""

from __future__ import annotations

from pathlib import Path

from localsym import paths
from localsym.experts.predictor import MarkovPredictor
from localsym.experts.prefetch import Prefetcher
from localsym.experts.traces import RoutingRecorder
from localsym.runtime.model_info import ModelInfo


class LiveExperts:
    def __init__(self, path: Path, info: ModelInfo, model_id: str, prefetch_bytes: int = 1 << 30) -> None:
        self.n_layer, self.n_used = info.n_layer, info.n_expert_used
        self.store = paths.data_dir() / "experts" / f"{model_id[:24]}.npz"
        self.pred = MarkovPredictor.load(self.store, info.n_layer, info.n_expert)
        self.rec = RoutingRecorder(info.n_layer, info.n_expert_used, on_layer=self._on_layer)
        self.prefetch = Prefetcher(path, prefetch_bytes)
        self._prev_layer = None
        self._prev_token: list = [None] * info.n_layer
        self.predicted = self.hits = 0
        self._guess: dict[int, set[int]] = {}

    @property
    def observer(self):
        return self.rec.observer

    def _on_layer(self, layer: int, experts) -> None:
        if len(experts) == 0:  # a last layer that kept no output row
            return
        ex = experts[-1]  # the newest token's experts
        guess = self._guess.pop(layer, None)
        if guess is not None:
            self.predicted += len(ex)
            self.hits += len(guess & set(ex.tolist()))
        prev = self._prev_layer if layer > 0 else None
        self.pred.learn(layer, ex, prev, self._prev_token[layer])
        self._prev_token[layer] = ex
        self._prev_layer = ex
        nxt = layer + 1 if layer + 1 < self.n_layer else 0
        g = self.pred.predict(nxt, ex if nxt else None, self._prev_token[nxt], self.n_used)
        self._guess[nxt] = set(g.tolist())
        self.prefetch.willneed(nxt, g)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.predicted if self.predicted else 0.0

    def close(self) -> None:
        self.pred.save(self.store)
        self.prefetch.close()
