"""Finding the blocks a question needs, out of millions of tokens, in milliseconds.

Two signals, one answer:
- an exact pointer index (token id -> blocks and offsets) for the question's rare tokens
  (identifiers, numbers, keys): blocks holding them are *needle* blocks, brought back
  verbatim (their exact tokens re-prefilled) so what they hold comes back exactly;
- FHRR sketches (a fixed-size holographic bundle per block) scored against a sketch of the
  question, brute force for small sessions and LSH candidates (sign random projections,
  several tables, multi-probe when the margin is low) at scale.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from kernels_numba import fhrr
from localsym.memory import attention_keys
from localsym.memory.index_db import BlockRow

DIM = 1024
SEED = 0x10CA1
LSH_TABLES, LSH_BITS = 16, 10
BRUTE_FORCE_MAX = 16384  # blocks (2M tokens at 128): one core scores 8000 in <5 ms; LSH beyond
RERANK_POOL = 4  # sketch candidates per slot that the attention signal reorders
ATTN_WEIGHT = 0.5  # attention z-score against the sketch's: a weaker signal (bench attention)
SHORTLIST_MIN = 1024  # token postings rescored beside the LSH candidates, at least


class PointerIndex:
    """token id -> [(block number, offset)]; with the blocks' exact tokens this recovers
    any needle verbatim."""

    def __init__(self) -> None:
        self.where: dict[int, list[tuple[int, int]]] = defaultdict(list)
        self.postings: dict[int, list[int]] = defaultdict(list)  # token -> blocks, ascending
        self.df: dict[int, int] = defaultdict(int)
        self.n_blocks = 0

    def add(self, tokens: np.ndarray) -> int:
        b = self.n_blocks
        seen = set()
        for off, t in enumerate(tokens.tolist()):
            self.where[t].append((b, off))
            if t not in seen:
                seen.add(t)
                self.df[t] += 1
                self.postings[t].append(b)
        self.n_blocks += 1
        return b

    def idf(self, token: int) -> float:
        df = self.df.get(token, 0)
        return math.log((self.n_blocks + 1) / (df + 0.5)) if df else 0.0

    def rare(self, tokens: Sequence[int], max_df: int) -> list[int]:
        return [t for t in dict.fromkeys(tokens) if 0 < self.df.get(t, 0) <= max_df]

    def blocks_with(self, token: int) -> set[int]:
        return set(self.postings.get(token, ()))

    def shortlist(self, tokens: Sequence[int] | np.ndarray, max_blocks: int) -> np.ndarray:
        """Blocks holding the question's tokens, rarest first, until ``max_blocks`` postings:
        the blocks whose sketches can score above noise, since an FHRR score is a weighted
        sum over shared tokens (a sub-linear candidate set, as an inverted index gives)."""
        toks = sorted((t for t in dict.fromkeys(tokens) if self.df.get(t, 0)), key=lambda t: self.df[t])
        lists: list[list[int]] = []
        total = 0
        for t in toks:
            if lists and total + self.df[t] > max_blocks:
                break
            lists.append(self.postings[t])
            total += self.df[t]
        if not lists:
            return np.zeros(0, np.int64)
        return np.unique(np.fromiter((b for ps in lists for b in ps), np.int64, total))


class SketchIndex:
    """Unit-norm real views of the blocks' FHRR sketches, and LSH tables over them."""

    def __init__(self, dim: int = DIM, seed: int = SEED, tables: int = LSH_TABLES, bits: int = LSH_BITS) -> None:
        self.dim, self.seed, self.tables, self.bits = dim, seed, tables, bits
        self._m = np.zeros((0, 2 * dim), np.float32)
        self.n = 0
        rng = np.random.default_rng(seed)
        self.planes = rng.standard_normal((tables * bits, 2 * dim)).astype(np.float32)
        self.buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in range(tables)]

    @property
    def matrix(self) -> np.ndarray:
        return self._m[: self.n]

    def sketch(self, tokens: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        t = np.asarray(tokens, np.int64)
        w = np.ones(len(t), np.float32) if weights is None else np.asarray(weights, np.float32)
        return fhrr.as_unit_real(fhrr.sketch(t, w, self.dim, self.seed))

    def add_vector(self, v: np.ndarray) -> int:
        self._m = _room(self._m, self.n + 1)
        self._m[self.n] = v
        codes = fhrr.lsh_codes(v[None, :], self.planes, self.bits)[0]
        for t, c in enumerate(codes.tolist()):
            self.buckets[t][c].append(self.n)
        self.n += 1
        return self.n - 1

    def add(self, tokens: np.ndarray) -> int:
        # in-block weights: a token repeated in a block counts once (1/tf), so boilerplate
        # repeated inside one block does not drown its rare content
        _, inv, counts = np.unique(tokens, return_inverse=True, return_counts=True)
        return self.add_vector(self.sketch(tokens, (1.0 / counts[inv]).astype(np.float32)))

    def brute(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = fhrr.score(self.matrix, q)
        top = np.argpartition(-s, min(k, self.n) - 1)[:k] if self.n > k else np.arange(self.n)
        top = top[np.argsort(-s[top])]
        return top, s[top]

    def candidates(self, q: np.ndarray, probe: int = 0) -> np.ndarray:
        """Ids sharing a bucket with ``q`` in any table; ``probe`` > 0 also visits buckets
        whose codes differ in one bit (multi-probe), the low-margin fallback."""
        codes = fhrr.lsh_codes(q[None, :], self.planes, self.bits)[0].tolist()
        found: set[int] = set()
        for t, c in enumerate(codes):
            found.update(self.buckets[t].get(c, ()))
            if probe:
                for b in range(self.bits):
                    found.update(self.buckets[t].get(c ^ (1 << b), ()))
        return np.fromiter(found, np.int64, len(found))

    def lsh(
        self, q: np.ndarray, k: int, min_margin: float = 0.02, extra: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` among LSH candidates (and ``extra`` ones, e.g. token postings), rescored
        exactly."""

        def rescore(cand):
            if extra is not None and len(extra):
                cand = np.union1d(cand, extra)
            return cand, (self.matrix[cand] @ q if len(cand) else np.zeros(0, np.float32))

        cand, scores = rescore(self.candidates(q))
        if len(cand) < 4 * k or _margin(scores, k) < min_margin:
            cand, scores = rescore(self.candidates(q, probe=1))  # HARMONY's fallback: widen the search
        order = np.argsort(-scores)[:k]
        return cand[order], scores[order]


def _room(a: np.ndarray, n: int) -> np.ndarray:
    """``a`` with at least ``n`` rows (zeros added), grown by doubling: amortised appends."""
    if n <= len(a):
        return a
    grown = np.zeros((max(64, 2 * len(a), n), *a.shape[1:]), a.dtype)
    grown[: len(a)] = a
    return grown


def _z(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    ref = x[mask] if mask is not None else x
    if len(ref) < 2:
        return np.zeros_like(x, np.float32)
    return ((x - ref.mean()) / (ref.std() + 1e-6)).astype(np.float32)


def _margin(scores: np.ndarray, k: int) -> float:
    if len(scores) <= k:
        return 0.0
    s = np.sort(scores)[::-1]
    return float(s[k - 1] - s[k])


class Retriever:
    """The selection policy of the retrieval issue, behind the tiered memory's interface."""

    def __init__(self, needle_df: int = 4, key_shape: tuple[int, ...] | None = None) -> None:
        self.blocks: list[BlockRow] = []
        self.pointers = PointerIndex()
        self.sketches = SketchIndex()
        self.needle_df = needle_df
        self.last_ms = 0.0
        self.last_needles: set[str] = set()  # keys of the needle blocks chosen
        # attention-native signal: representative keys per block (zeros where a block has none)
        self.key_shape = key_shape
        self._keys = np.zeros((0, *key_shape), np.float16) if key_shape else None
        self._has_keys = np.zeros(0, bool)

    def add(self, block: BlockRow) -> None:
        self.blocks.append(block)
        self.pointers.add(block.tokens)
        self.sketches.add(block.tokens)
        if self._keys is not None:
            n = len(self.blocks)
            self._keys, self._has_keys = _room(self._keys, n), _room(self._has_keys, n)
            assert self.key_shape is not None  # keys are kept only with a shape
            size = int(np.prod(self.key_shape)) * 2
            if block.attn is not None and len(block.attn) == size:
                self._keys[n - 1] = np.frombuffer(block.attn, np.float16).reshape(self.key_shape)
                self._has_keys[n - 1] = True

    @property
    def has_keys(self) -> bool:
        return bool(self._has_keys[: len(self.blocks)].any())

    def attention(self, ids: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Attention scores of blocks ``ids`` (0 where a block has no keys) and the mask of
        those that have them."""
        ids = np.asarray(ids, np.int64)
        mask = self._has_keys[ids] if self._keys is not None else np.zeros(len(ids), bool)
        out = np.zeros(len(ids), np.float32)
        if mask.any():
            assert self._keys is not None  # without keys the mask is all False
            out[mask] = attention_keys.scores(self._keys[ids[mask]], query)
        return out, mask

    def rerank(self, ids: np.ndarray, sketch: np.ndarray, query: np.ndarray) -> np.ndarray:
        """Order candidates by the sum of their sketch and attention z-scores."""
        att, mask = self.attention(ids, query)
        combined = _z(sketch)
        if mask.sum() > 1:
            combined = combined + ATTN_WEIGHT * np.where(mask, _z(att, mask), 0.0)
        return ids[np.argsort(-combined, kind="stable")]

    def rank(self, question: Sequence[int], k: int, query: np.ndarray | None = None) -> tuple[list[int], set[int]]:
        """Block numbers, best first, and which of them are needle blocks."""
        n = len(self.blocks)
        if n == 0:
            return [], set()
        rare = self.pointers.rare(question, max(self.needle_df, n // 1000))
        hits: dict[int, float] = defaultdict(float)
        for t in rare:
            w = self.pointers.idf(t)
            for b in self.pointers.blocks_with(t):
                hits[b] += w
        needles = {b for b, s in hits.items() if s >= 0.5 * max(hits.values())} if hits else set()
        q_tokens = np.asarray(list(dict.fromkeys(question)), np.int64)
        weights = np.array([self.pointers.idf(t) for t in q_tokens.tolist()], np.float32)
        keep = weights > 0
        ranked: list[int] = sorted(hits, key=lambda b: -hits[b])
        use_attn = query is not None and self.has_keys
        if keep.any():
            q = self.sketches.sketch(q_tokens[keep], weights[keep])
            ids, sk = self.search(q, q_tokens[keep], RERANK_POOL * k if use_attn else k)
            if use_attn:  # the second signal reorders the sketch's candidates
                assert query is not None
                ids = self.rerank(ids, sk, query)[:k]
            ranked += [int(i) for i in ids if int(i) not in hits]
        elif use_attn:  # no word of the question is rare enough to weigh: attention alone
            assert query is not None
            ids = np.flatnonzero(self._has_keys[:n])
            att, _ = self.attention(ids, query)
            ranked += [int(i) for i in ids[np.argsort(-att)[:k]] if int(i) not in hits]
        return ranked, needles

    def search(
        self, q: np.ndarray, q_tokens: Sequence[int] | np.ndarray, k: int, force: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sketch search: brute force for small sessions; beyond, exact rescoring of the LSH
        candidates plus the postings of the question's rarer tokens (sign projections alone
        miss most blocks that share only a few tokens with a short question: their cosine
        is ~0.1, where a 10-bit bucket collides with probability ~0.3%)."""
        if force == "brute" or (force is None and self.sketches.n <= BRUTE_FORCE_MAX):
            return self.sketches.brute(q, k)
        extra = None if force == "lsh" else self.pointers.shortlist(q_tokens, max(SHORTLIST_MIN, self.sketches.n // 16))
        return self.sketches.lsh(q, k, extra=extra)

    def select(self, question: Sequence[int], budget_tokens: int, query: np.ndarray | None = None) -> list[BlockRow]:
        t0 = time.perf_counter()
        ranked, needles = self.rank(question, k=max(8, budget_tokens // 64), query=query)
        # a needle's value may run past its block's end (`KEY = "ab` | `cd"`): the next
        # block of the same document comes with it, verbatim too
        follow = {
            b + 1 for b in needles if b + 1 < len(self.blocks) and self.blocks[b + 1].doc_id == self.blocks[b].doc_id
        }
        needles = set(needles) | follow
        order = []
        for b in ranked:
            order.append(b)
            if b + 1 in follow:
                order.append(b + 1)
        chosen, used, seen = [], 0, set()
        for b in order:
            if b in seen:
                continue
            seen.add(b)
            n = self.blocks[b].n_tokens
            if used + n > budget_tokens:
                continue
            chosen.append(b)
            used += n
        self.last_needles = {self.blocks[b].key for b in needles if b in chosen}
        self.last_ms = (time.perf_counter() - t0) * 1000
        return [self.blocks[b] for b in sorted(chosen)]
