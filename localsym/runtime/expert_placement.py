"""Which layers keep their experts in RAM when the GPU cannot hold them all.

llama.cpp's ``--n-cpu-moe N`` keeps the experts of the first N layers in RAM. Every token
runs ``n_used`` experts of every layer, so the compute moved to the CPU is the same
whichever layers go; what differs is how much of a layer's experts the routing really
touches. A layer whose routing is concentrated keeps a small working set in RAM (page
cache, prefetch budget); a diffuse layer touches all its experts. So the RAM side should
take the layers with the smallest hot sets, as learned from observed routing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Placement:
    cpu_layers: list[int]  # the layers whose experts stay in RAM, ascending
    hot_bytes: int  # RAM for the experts that serve ``coverage`` of those layers' routing
    first_n_hot_bytes: int  # the same for llama.cpp's choice, the first N layers
    all_bytes: int  # every expert of those N layers
    coverage: float

    def note(self) -> str:
        return (
            f"learned routing: experts of layers {_ranges(self.cpu_layers)} stay in RAM; "
            f"{self.coverage:.0%} of their routing needs {self.hot_bytes / 2**20:.0f} MiB "
            f"(the first {len(self.cpu_layers)} layers would need {self.first_n_hot_bytes / 2**20:.0f} MiB)"
        )


def hot_experts(usage: np.ndarray, coverage: float) -> np.ndarray:
    """Per layer, how many of its most used experts serve ``coverage`` of its routing."""
    u = np.sort(np.asarray(usage, np.float64), axis=1)[:, ::-1]
    total = u.sum(axis=1, keepdims=True)
    frac = np.cumsum(u, axis=1) / np.where(total > 0, total, 1.0)
    n = (frac < coverage - 1e-12).sum(axis=1) + 1
    return np.where(total[:, 0] > 0, np.minimum(n, u.shape[1]), u.shape[1])


def advise(usage: np.ndarray, expert_bytes: Sequence[int], n_cpu: int, coverage: float = 0.9) -> Placement:
    """The ``n_cpu`` layers with the smallest RAM working sets.

    ``usage``: [layers, experts] routing counts (any scale); ``expert_bytes``: the bytes of
    each layer's ``*_exps`` tensors (0 for dense layers, which are never chosen)."""
    usage = np.asarray(usage, np.float64)
    n_layer, n_expert = usage.shape
    if len(expert_bytes) != n_layer:
        raise ValueError(f"usage has {n_layer} layers, the model {len(expert_bytes)}")
    per_expert = np.asarray(expert_bytes, np.float64) / n_expert
    hot = hot_experts(usage, coverage) * per_expert
    moe = [i for i in range(n_layer) if expert_bytes[i] > 0]
    n_cpu = max(0, min(n_cpu, len(moe)))
    chosen = sorted(sorted(moe, key=lambda i: (hot[i], i))[:n_cpu])
    first = moe[:n_cpu]
    return Placement(
        chosen, int(hot[chosen].sum()), int(hot[first].sum()), int(sum(expert_bytes[i] for i in chosen)), coverage
    )


def _ranges(layers: Sequence[int]) -> str:
    out, i = [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        out.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(out) or "none"
