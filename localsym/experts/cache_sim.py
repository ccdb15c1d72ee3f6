"""Expert caches replayed on a routing trace, at equal capacity for every policy.

The universe is every (layer, expert) pair. Per token, layer by layer: a predictor (if
any) prefetches its top-k guesses for the layer (inserted as most recent, evicting the
least recent), then the layer's real experts are accessed (hit or miss; a miss loads the
expert, evicting as the policy says), then the predictor learns what happened.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict

import numpy as np


def _ids(trace: np.ndarray, n_expert: int) -> list[list[np.ndarray]]:
    T, L, _ = trace.shape
    return [[trace[t, i][trace[t, i] >= 0] for i in range(L)] for t in range(T)]


def lru(trace: np.ndarray, n_expert: int, capacity: int, predictor=None, k: int | None = None) -> float:
    cache: OrderedDict[int, None] = OrderedDict()
    hits = total = 0
    steps = _ids(trace, n_expert)
    k = k or trace.shape[2]
    prev_tok: list[np.ndarray | None] = [None] * trace.shape[1]
    for row in steps:
        prev_layer = None
        for layer, ex in enumerate(row):
            if predictor is not None and (layer > 0 or prev_tok[0] is not None):
                for e in predictor.predict(layer, prev_layer, prev_tok[layer], k).tolist():
                    key = layer * n_expert + e
                    cache[key] = None
                    cache.move_to_end(key)
                    if len(cache) > capacity:
                        cache.popitem(last=False)
            for e in ex.tolist():
                key = layer * n_expert + e
                total += 1
                if key in cache:
                    hits += 1
                    cache.move_to_end(key)
                else:
                    cache[key] = None
                    if len(cache) > capacity:
                        cache.popitem(last=False)
            if predictor is not None and len(ex):
                predictor.learn(layer, ex, prev_layer, prev_tok[layer])
            prev_layer = ex if len(ex) else None
            prev_tok[layer] = ex if len(ex) else prev_tok[layer]
    return hits / max(total, 1)


def lfu(trace: np.ndarray, n_expert: int, capacity: int) -> float:
    """Evict the least frequently used (counts since the start; ties: least recent)."""
    count: dict[int, int] = {}
    cached: set[int] = set()
    heap: list[tuple[int, int, int]] = []
    hits = total = clock = 0
    for row in _ids(trace, n_expert):
        for layer, ex in enumerate(row):
            for e in ex.tolist():
                key = layer * n_expert + e
                clock += 1
                total += 1
                count[key] = count.get(key, 0) + 1
                if key in cached:
                    hits += 1
                else:
                    cached.add(key)
                    while len(cached) > capacity:
                        c, _, victim = heapq.heappop(heap)
                        if victim in cached and c == count[victim] and victim != key:
                            cached.discard(victim)
                heapq.heappush(heap, (count[key], clock, key))
    return hits / max(total, 1)


def belady(trace: np.ndarray, n_expert: int, capacity: int) -> float:
    """The oracle: evict the expert whose next use is furthest away (demand caching bound)."""
    seq = [layer * n_expert + e for row in _ids(trace, n_expert) for layer, ex in enumerate(row) for e in ex.tolist()]
    nxt = [0] * len(seq)
    last: dict[int, int] = {}
    for i in range(len(seq) - 1, -1, -1):
        nxt[i] = last.get(seq[i], 1 << 60)
        last[seq[i]] = i
    cached: dict[int, int] = {}
    heap: list[tuple[int, int]] = []
    hits = 0
    for i, key in enumerate(seq):
        if key in cached:
            hits += 1
        cached[key] = nxt[i]
        heapq.heappush(heap, (-nxt[i], key))
        while len(cached) > capacity:
            neg, victim = heapq.heappop(heap)
            if cached.get(victim) == -neg:
                del cached[victim]
    return hits / max(len(seq), 1)


def prediction_hit_rate(trace: np.ndarray, n_expert: int, predictor) -> float:
    """Share of the real experts that the top-k guess named, layer by layer (no cache)."""
    k = trace.shape[2]
    hits = total = 0
    prev_tok: list[np.ndarray | None] = [None] * trace.shape[1]
    for row in _ids(trace, n_expert):
        prev_layer = None
        for layer, ex in enumerate(row):
            if len(ex) and (layer > 0 or prev_tok[0] is not None):
                guess = set(predictor.predict(layer, prev_layer, prev_tok[layer], k).tolist())
                hits += len(guess & set(ex.tolist()))
                total += len(ex)
            if len(ex):
                predictor.learn(layer, ex, prev_layer, prev_tok[layer])
                prev_tok[layer] = ex
            prev_layer = ex if len(ex) else None
    return hits / max(total, 1)
