"""Attention-native block scoring: a few representative keys per block, scored against
the question's own query vectors, as InfLLM and Quest do.

A block's keys come from its KV when it is sealed (post-RoPE, at the positions it was
computed at); the question's queries come from a probe decode (post-RoPE at the probe's
positions). Both are rotated back to position 0 (RoPE is a rotation per channel pair, so
its inverse is exact), which leaves q.k as content against content, wherever the block
and the question sit. Per block we keep, for a few layers and every KV head, the mean of
its un-rotated keys (InfLLM's representative, reduced to a centroid). On SmolLM2-135M
the centroid ranked a snippet's source block better than the largest-norm keys or
Quest's channel bounds did (`localsym bench attention`), though far below the sketch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REPS = 1  # representative keys per block, layer and KV head: the centroid


@dataclass(frozen=True)
class RopeSpec:
    n_rot: int  # rotated channels per head (the first n_rot)
    base: float
    neox: bool  # pairs (i, i + n_rot/2) instead of (2i, 2i + 1)

    def angles(self, pos: np.ndarray) -> np.ndarray:
        i = np.arange(self.n_rot // 2, dtype=np.float64)
        return np.asarray(pos, np.float64)[:, None] * self.base ** (-2.0 * i / self.n_rot)


def unrope(x: np.ndarray, pos: np.ndarray, spec: RopeSpec) -> np.ndarray:
    """[tokens, heads, head_dim] rotated at ``pos`` -> the same vectors at position 0."""
    x = np.asarray(x, np.float32)
    if x.ndim != 3 or len(pos) != len(x):
        raise ValueError(f"unrope wants [tokens, heads, dim] and one position per token, got {x.shape} and {len(pos)}")
    half = spec.n_rot // 2
    th = spec.angles(pos)[:, None, :]  # [tokens, 1, half]
    c, s = np.cos(th).astype(np.float32), np.sin(th).astype(np.float32)
    out = x.copy()
    if spec.neox:
        a, b = x[..., :half], x[..., half : spec.n_rot]
        out[..., :half], out[..., half : spec.n_rot] = a * c + b * s, b * c - a * s
    else:
        a, b = x[..., 0 : spec.n_rot : 2], x[..., 1 : spec.n_rot : 2]
        out[..., 0 : spec.n_rot : 2], out[..., 1 : spec.n_rot : 2] = a * c + b * s, b * c - a * s
    return out


def block_keys(k_rows: list[np.ndarray], pos: np.ndarray, n_head_kv: int, spec: RopeSpec) -> np.ndarray:
    """Per selected layer ([tokens, n_head_kv * head_dim] post-RoPE K rows), each head's
    centroid of un-rotated keys: [layers, n_head_kv, REPS, head_dim] f16."""
    out = []
    for rows in k_rows:
        k = unrope(np.asarray(rows, np.float32).reshape(len(rows), n_head_kv, -1), pos, spec)
        out.append(k.mean(axis=0)[:, None, :])
    return np.stack(out).astype(np.float16)


def query_summary(q_rows: list[np.ndarray], pos: np.ndarray, spec: RopeSpec) -> np.ndarray:
    """Per selected layer ([tokens, n_head, head_dim] post-RoPE Q), the mean un-rotated
    query of each head: [layers, n_head, head_dim]."""
    return np.stack([unrope(q, pos, spec).mean(axis=0) for q in q_rows]).astype(np.float32)


def scores(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Blocks' attention scores: per layer and query head, the best representative key's
    q.k / sqrt(d) (a query head reads its KV group's keys), averaged.

    keys: [blocks, layers, n_head_kv, reps, dim]; query: [layers, n_head, dim]."""
    n_b, n_l, n_kv, _, d = keys.shape
    if query.shape[0] != n_l or query.shape[2] != d or query.shape[1] % n_kv:
        raise ValueError(f"query {query.shape} does not fit keys {keys.shape}")
    group = query.shape[1] // n_kv
    q = query.reshape(n_l, n_kv, group, d)
    dots = np.einsum("blhrd,lhgd->blhgr", keys.astype(np.float32), q)  # [b, l, kv, group, reps]
    return dots.max(axis=4).mean(axis=(1, 2, 3)) / np.sqrt(d)


def select_layers(n_layer: int) -> list[int]:
    """Two layers past the middle (60% and 75% deep): on SmolLM2 the early layers' and the
    last layers' centroids ranked no better than chance."""
    return sorted({min(n_layer - 1, round(0.6 * n_layer)), min(n_layer - 1, (3 * n_layer) // 4)})
