"""Routing traces: which experts each token used at each layer.

A trace is an int32 array [tokens, layers, n_used] (-1 where a layer kept no row for a
token: llama.cpp's last layer computes only the output rows). Recorded from a real GGUF
through the bridge's eval callback, or drawn from a known Markov structure whose
Bayes-optimal predictions are computable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def fold(per_layer: list[np.ndarray], n_used: int) -> np.ndarray:
    """One decode call's rows per layer -> [tokens, layers, n_used], -1 where a layer kept
    no row for a token (a short layer kept the last, output, rows)."""
    n_tok = max((len(v) for v in per_layer), default=0)
    block = np.full((n_tok, len(per_layer), n_used), -1, np.int32)
    for layer, ex in enumerate(per_layer):
        if len(ex):
            block[n_tok - len(ex) :, layer, :] = ex
    return block


class RoutingRecorder:
    """Keeps every decoded token's routing, read by the bridge's compiled routing tap."""

    def __init__(self, n_layer: int, n_used: int) -> None:
        from localsym.runtime.bridge import RoutingTap

        self.n_layer, self.n_used = n_layer, n_used
        self.rows: list[np.ndarray] = []  # one [layers, n_used] per token
        self.observer = RoutingTap(n_layer, n_used, self._on_decode)

    def _on_decode(self, per_layer: list[np.ndarray]) -> None:
        self.rows.extend(fold(per_layer, self.n_used))

    def trace(self) -> np.ndarray:
        return np.stack(self.rows) if self.rows else np.zeros((0, self.n_layer, self.n_used), np.int32)


def record(
    model_path: Path,
    text: str,
    n_decode: int = 64,
    n_ctx: int = 1024,
    n_gpu_layers: int = 0,
    n_cpu_moe: int | Sequence[int] = 0,
) -> np.ndarray:
    """Prefill ``text`` then decode greedily, recording every token's routing (offloaded
    as asked: ``n_gpu_layers``, and the layers whose experts stay in RAM)."""
    from localsym.runtime.bridge import Context, Model, Sampler
    from localsym.runtime.model_info import model_info

    info = model_info(model_path)
    if not info.is_moe:
        raise ValueError(f"{model_path.name} is a dense model: no experts to observe")
    rec = RoutingRecorder(info.n_layer, info.n_expert_used)
    model = Model(model_path, n_gpu_layers=n_gpu_layers, n_cpu_moe=n_cpu_moe)
    ctx = Context(model, n_ctx, observer=rec.observer)
    sampler = Sampler(0.0)
    try:
        toks = model.tokenize(text)[: n_ctx - n_decode - 1]
        ctx.decode(toks, 0, 0, logits="last")
        pos = len(toks)
        for _ in range(n_decode):
            tok = sampler.sample(ctx)
            ctx.decode([tok], pos, 0)
            pos += 1
    finally:
        sampler.close()
        ctx.close()
        model.close()
    return rec.trace()


@dataclass
class MarkovSource:
    """A known routing process: experts at layer L+1 follow a sparse transition from those
    at layer L; layer 0 follows the previous token's layer 0."""

    layer_T: np.ndarray  # [layers - 1, E, E] rows sum to 1
    token_T: np.ndarray  # [E, E]
    n_used: int

    @classmethod
    def random(
        cls, n_layer: int = 16, n_expert: int = 64, n_used: int = 4, alpha: float = 0.05, seed: int = 0
    ) -> MarkovSource:
        rng = np.random.default_rng(seed)
        layer_T = rng.dirichlet(np.full(n_expert, alpha), size=(n_layer - 1, n_expert))
        token_T = rng.dirichlet(np.full(n_expert, alpha), size=n_expert)
        return cls(layer_T.astype(np.float64), token_T.astype(np.float64), n_used)

    def next_dist(self, prev: np.ndarray, T: np.ndarray) -> np.ndarray:
        return T[prev].mean(axis=0)

    def sample(self, n_tokens: int, seed: int = 1) -> np.ndarray:
        rng = np.random.default_rng(seed)
        L = self.layer_T.shape[0] + 1
        E = self.token_T.shape[0]
        out = np.zeros((n_tokens, L, self.n_used), np.int32)
        prev0 = rng.choice(E, self.n_used, replace=False)
        for t in range(n_tokens):
            cur = _draw(rng, self.next_dist(prev0, self.token_T), self.n_used)
            out[t, 0] = cur
            prev0 = cur
            for layer in range(1, L):
                cur = _draw(rng, self.next_dist(cur, self.layer_T[layer - 1]), self.n_used)
                out[t, layer] = cur
        return out


def _draw(rng: np.random.Generator, p: np.ndarray, k: int) -> np.ndarray:
    # distinct experts, as a router's top-k: sample without replacement
    p = p + 1e-12
    return rng.choice(len(p), size=k, replace=False, p=p / p.sum()).astype(np.int32)
