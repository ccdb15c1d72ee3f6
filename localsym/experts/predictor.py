"""Predicting the experts a layer will use before it runs.

``MarkovPredictor`` learns online two transition models with exponential forgetting:
layer to layer (experts at L -> L+1, same token) and token to token (layer L at t -> layer
L at t+1), each a row-normalised conditional P(next | one active expert), fitted as a
mixture by online EM; the prediction for the next layer is the mixture over the active
experts, plus a smaller weight of the token-to-token mixture. ``CoFiringPredictor`` is seed
paper 003's baseline: raw co-firing counts between adjacent layers, rows of the active
experts summed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from numba import njit


class MarkovPredictor:
    name = "markov"

    def __init__(
        self, n_layer: int, n_expert: int, token_weight: float = 0.3, decay: float = 0.999, prior: float = 0.01
    ) -> None:
        self.n_layer, self.n_expert = n_layer, n_expert
        self.token_weight, self.decay = token_weight, decay
        self.layer_c = np.full((max(n_layer - 1, 1), n_expert, n_expert), prior, np.float64)
        self.token_c = np.full((n_layer, n_expert, n_expert), prior, np.float64)
        self.freq = np.full((n_layer, n_expert), prior, np.float64)

    def scores(
        self, layer: int, same_token_prev: np.ndarray | None, prev_token_same_layer: np.ndarray | None
    ) -> np.ndarray:
        s = np.zeros(self.n_expert)
        has_layer = same_token_prev is not None and layer > 0 and len(same_token_prev) > 0
        if has_layer:
            _mixture(self.layer_c[layer - 1], same_token_prev, 1.0, s)
        if prev_token_same_layer is not None and len(prev_token_same_layer):
            _mixture(self.token_c[layer], prev_token_same_layer, self.token_weight if has_layer else 1.0, s)
        if not (has_layer or (prev_token_same_layer is not None and len(prev_token_same_layer))):
            s = self.freq[layer] / self.freq[layer].sum()
        return s

    def predict(self, layer: int, same_token_prev, prev_token_same_layer, k: int) -> np.ndarray:
        return _top_k(self.scores(layer, same_token_prev, prev_token_same_layer), k)

    def learn(self, layer: int, experts: np.ndarray, same_token_prev, prev_token_same_layer) -> None:
        d = self.decay
        _bump(self.freq[layer], experts, d)
        if same_token_prev is not None and layer > 0 and len(same_token_prev):
            _credit(self.layer_c[layer - 1], same_token_prev, experts, d)
        if prev_token_same_layer is not None and len(prev_token_same_layer):
            _credit(self.token_c[layer], prev_token_same_layer, experts, d)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, layer_c=self.layer_c, token_c=self.token_c, freq=self.freq, version=np.int32(1))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, n_layer: int, n_expert: int) -> MarkovPredictor:
        p = cls(n_layer, n_expert)
        if path.exists():
            with np.load(path) as z:
                if z["layer_c"].shape == p.layer_c.shape and int(z["version"]) == 1:
                    p.layer_c, p.token_c, p.freq = z["layer_c"], z["token_c"], z["freq"]
        return p


@njit(cache=True)
def _bump(freq, experts, decay):
    freq *= decay
    for e in experts:
        freq[e] += 1.0


@njit(cache=True)
def _top_k(scores, k):
    out = np.empty(k, np.int64)
    taken = np.zeros(len(scores), np.bool_)
    for i in range(k):
        best = -1
        for e in range(len(scores)):
            if not taken[e] and (best < 0 or scores[e] > scores[best]):
                best = e
        taken[best] = True
        out[i] = best
    return out


@njit(cache=True)
def _mixture(counts, sources, weight, out):
    """out += weight * mean over sources of the row-normalised counts."""
    for a in sources:
        total = counts[a].sum()
        for e in range(counts.shape[1]):
            out[e] += weight * counts[a, e] / total / len(sources)


@njit(cache=True)
def _credit(counts, sources, targets, decay):
    """Online EM for a mixture: each next expert came from one of the active ones, so it
    credits each source by how likely that source was to send it there (responsibility),
    instead of every source in full (which blurs the rows into each other)."""
    S, T = len(sources), len(targets)
    resp = np.empty((S, T))
    for i in range(S):
        total = counts[sources[i]].sum()
        for j in range(T):
            resp[i, j] = counts[sources[i], targets[j]] / total
    for j in range(T):
        col = 0.0
        for i in range(S):
            col += resp[i, j]
        for i in range(S):
            resp[i, j] /= col
    for i in range(S):
        counts[sources[i]] *= decay
        for j in range(T):
            counts[sources[i], targets[j]] += resp[i, j]


class CoFiringPredictor:
    """Seed paper 003: co-firing counts between adjacent layers; next-layer score = sum of
    the active experts' rows (no normalisation, no token-to-token term)."""

    name = "cofiring"

    def __init__(self, n_layer: int, n_expert: int) -> None:
        self.n_expert = n_expert
        self.c = np.zeros((max(n_layer - 1, 1), n_expert, n_expert), np.float64)
        self.freq = np.zeros((n_layer, n_expert))

    def predict(self, layer: int, same_token_prev, prev_token_same_layer, k: int) -> np.ndarray:
        if layer > 0 and same_token_prev is not None and len(same_token_prev):
            s = self.c[layer - 1][same_token_prev].sum(axis=0)
        else:
            s = self.freq[layer].copy()
        return np.argpartition(-s, k - 1)[:k]

    def learn(self, layer: int, experts: np.ndarray, same_token_prev, prev_token_same_layer) -> None:
        self.freq[layer, experts] += 1
        if layer > 0 and same_token_prev is not None and len(same_token_prev):
            self.c[layer - 1][np.ix_(same_token_prev, experts)] += 1


class OraclePredictor:
    """Knows the source's true transitions: the Bayes-optimal predictor for synthetic traces."""

    name = "bayes"

    def __init__(self, source) -> None:
        self.src = source

    def predict(self, layer: int, same_token_prev, prev_token_same_layer, k: int) -> np.ndarray:
        if layer == 0:
            p = (
                self.src.next_dist(prev_token_same_layer, self.src.token_T)
                if prev_token_same_layer is not None
                else np.ones(self.src.token_T.shape[0])
            )
        else:
            p = self.src.next_dist(same_token_prev, self.src.layer_T[layer - 1])
        return np.argpartition(-p, k - 1)[:k]

    def learn(self, *args) -> None:
        pass
