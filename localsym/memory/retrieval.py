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

import errno
import logging
import math
import os
import sqlite3
import struct
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kernels_numba import fhrr
from localsym.errors import BudgetError, LocalsymError
from localsym.memory import attention_keys
from localsym.memory.index_db import BlockRow, IndexDB

log = logging.getLogger("localsym.retrieval")

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
        self._bucketed = 0  # rows [0, _bucketed) are in the LSH tables (filled lazily)

    def load(self, m: np.ndarray) -> None:
        """Take a whole matrix of rows at once (a persisted index); LSH tables wait for a search."""
        self._m, self.n = np.ascontiguousarray(m, np.float32), len(m)
        self.buckets = [defaultdict(list) for _ in range(self.tables)]
        self._bucketed = 0

    def _fill_buckets(self) -> None:
        if self._bucketed >= self.n:
            return
        codes = fhrr.lsh_codes(self._m[self._bucketed : self.n], self.planes, self.bits)
        for i, row in enumerate(codes.tolist(), start=self._bucketed):
            for t, c in enumerate(row):
                self.buckets[t][c].append(i)
        self._bucketed = self.n

    def block_vector(self, tokens: np.ndarray) -> np.ndarray:
        """A block's sketch: in-block weights 1/tf, so boilerplate repeated inside one block
        does not drown its rare content."""
        _, inv, counts = np.unique(tokens, return_inverse=True, return_counts=True)
        return self.sketch(tokens, (1.0 / counts[inv]).astype(np.float32))

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
        self.n += 1
        if self._bucketed == self.n - 1:  # the tables are current: keep them so
            self._fill_buckets()
        return self.n - 1

    def add(self, tokens: np.ndarray) -> int:
        return self.add_vector(self.block_vector(tokens))

    def brute(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        s = fhrr.score(self.matrix, q)
        top = np.argpartition(-s, min(k, self.n) - 1)[:k] if self.n > k else np.arange(self.n)
        top = top[np.argsort(-s[top])]
        return top, s[top]

    def candidates(self, q: np.ndarray, probe: int = 0) -> np.ndarray:
        """Ids sharing a bucket with ``q`` in any table; ``probe`` > 0 also visits buckets
        whose codes differ in one bit (multi-probe), the low-margin fallback."""
        self._fill_buckets()
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
        self._blocks: list[BlockRow] = []
        self.pointers = PointerIndex()
        self.sketches = SketchIndex()
        self.needle_df = needle_df
        self.last_ms = 0.0
        self.last_needles: set[str] = set()  # keys of the needle blocks chosen
        self.last_scores: dict[str, float] = {}  # chosen block key -> its sketch score for the question
        self._last_q: np.ndarray | None = None
        # attention-native signal: representative keys per block (zeros where a block has none)
        self.key_shape = key_shape
        self._keys = np.zeros((0, *key_shape), np.float16) if key_shape else None
        self._has_keys = np.zeros(0, bool)

    @property
    def blocks(self) -> list[BlockRow]:
        return self._blocks

    def _count(self) -> int:
        return len(self._blocks)

    def _doc_of(self, b: int) -> int:
        return self._blocks[b].doc_id

    def _len_of(self, b: int) -> int:
        return self._blocks[b].n_tokens

    def _rows_of(self, bs: list[int]) -> list[BlockRow | None]:
        return [self._blocks[b] for b in bs]

    def add(self, block: BlockRow, vector: np.ndarray | None = None) -> None:
        self._blocks.append(block)
        self.pointers.add(block.tokens)
        self.sketches.add_vector(self.sketches.block_vector(block.tokens) if vector is None else vector)
        self._add_keys(len(self._blocks), block.attn)

    def _add_keys(self, n: int, attn: bytes | None) -> None:
        """Block ``n - 1``'s attention keys (zeros, and not counted, when it has none)."""
        if self._keys is None:
            return
        self._keys, self._has_keys = _room(self._keys, n), _room(self._has_keys, n)
        assert self.key_shape is not None  # keys are kept only with a shape
        size = int(np.prod(self.key_shape)) * 2
        if attn is not None and len(attn) == size:
            self._keys[n - 1] = np.frombuffer(attn, np.float16).reshape(self.key_shape)
            self._has_keys[n - 1] = True

    @property
    def has_keys(self) -> bool:
        return bool(self._has_keys[: self._count()].any())

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
        n = self._count()
        self._last_q = None
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
            q = self._last_q = self.sketches.sketch(q_tokens[keep], weights[keep])
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
        n = self._count()
        follow = {b + 1 for b in needles if b + 1 < n and self._doc_of(b + 1) == self._doc_of(b)}
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
            size = self._len_of(b)
            if used + size > budget_tokens:
                continue
            chosen.append(b)
            used += size
        chosen.sort()
        rows = self._rows_of(chosen)
        q = self._last_q
        scores = self.sketches.matrix[chosen] @ q if q is not None and chosen else np.zeros(len(chosen), np.float32)
        out = [r for r in rows if r is not None]  # a block whose tokens are damaged is left out
        self.last_needles = {r.key for b, r in zip(chosen, rows) if r is not None and b in needles}
        self.last_scores = {r.key: float(sc) for r, sc in zip(rows, scores.tolist()) if r is not None}
        self.last_ms = (time.perf_counter() - t0) * 1000
        return out


# -- the persisted index: what a session's retrieval needs, kept on disk as blocks are sealed --

SKETCH_MAGIC = b"LSYMSKX\0"
SKETCH_VERSION = 1
_SK_HEADER = 64


def _full_disk(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class SketchFile:
    """A session's block sketches: a 64-byte header (magic, format version, dim, seed, the
    header's crc32), then one row per sealed document block (``2 * dim`` float32), appended
    as blocks are sealed and read through a memory map. Each row's crc32 is kept in the
    block's index row, so a damaged or missing row is detected on use and recomputed from
    the block's exact tokens; a file with a damaged header is started over the same way."""

    def __init__(self, path: Path, dim: int = DIM, seed: int = SEED) -> None:
        self.path, self.dim, self.seed = path, dim, seed
        self.row_bytes = 2 * dim * 4
        body = SKETCH_MAGIC + struct.pack("<III", SKETCH_VERSION, dim, seed)
        self._header = body + struct.pack("<I", zlib.crc32(body))
        self._header += b"\0" * (_SK_HEADER - len(self._header))

    def _valid(self) -> bool:
        try:
            with open(self.path, "rb") as f:
                return f.read(_SK_HEADER) == self._header
        except OSError:
            return False

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``rows`` as a float32 matrix (a copy), and which of them the file holds."""
        out = np.zeros((len(rows), 2 * self.dim), np.float32)
        have = np.zeros(len(rows), bool)
        if not len(rows) or not self._valid():
            return out, have
        n_file = (self.path.stat().st_size - _SK_HEADER) // self.row_bytes
        if n_file <= 0:
            return out, have
        mm = np.memmap(self.path, np.float32, "r", offset=_SK_HEADER, shape=(n_file, 2 * self.dim))
        have = (rows >= 0) & (rows < n_file)
        out[have] = mm[rows[have]]
        del mm
        return out, have

    def append(self, vectors: list[np.ndarray]) -> list[tuple[int, int]]:
        """Append rows; returns each one's (row, crc32). A full disk is one BudgetError line."""
        try:
            fresh = not self._valid()
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0), 0o600)
            try:
                if fresh:
                    os.pwrite(fd, self._header, 0)
                size = os.fstat(fd).st_size
                row = -(-(size - _SK_HEADER) // self.row_bytes)  # past a torn last row
                out = []
                for v in vectors:
                    raw = np.ascontiguousarray(v, np.float32).tobytes()
                    if os.pwrite(fd, raw, _SK_HEADER + row * self.row_bytes) != len(raw):
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    out.append((row, zlib.crc32(raw)))
                    row += 1
                return out
            finally:
                os.close(fd)
        except OSError as e:
            if _full_disk(e):
                raise BudgetError(f"cannot write {self.path}: {e.strerror}; free some disk space") from None
            raise


class StoredPointers(PointerIndex):
    """The pointer index read from the session's SQLite (postings and document frequencies
    written with each block), for the tokens of one question at a time; blocks indexed
    from their tokens while the disk could not take them are kept in memory beside it."""

    def __init__(self, db: IndexDB) -> None:
        super().__init__()
        self.db = db
        self.ordinal: dict[int, int] = {}  # block id -> its number in the catalog
        self._mem: dict[int, list[int]] = defaultdict(list)  # token -> block numbers, not on disk

    def reset(self, ids: np.ndarray) -> None:
        self.ordinal = {int(i): b for b, i in enumerate(ids.tolist())}
        self.n_blocks = len(ids)
        self._mem.clear()

    def remember(self, b: int, tokens: np.ndarray) -> None:
        for t in np.unique(tokens).tolist():
            self._mem[t].append(b)

    def prepare(self, tokens: Sequence[int]) -> None:
        uniq = [int(t) for t in dict.fromkeys(tokens)]
        self.df = defaultdict(int, {t: 0 for t in uniq})
        self.df.update(self.db.df(uniq))
        for t in uniq:
            if t in self._mem:
                self.df[t] += len(self._mem[t])
        self.postings = defaultdict(list)

    def _post(self, token: int) -> list[int]:
        if token not in self.postings:
            bs = [self.ordinal[i] for i in self.db.postings(token) if i in self.ordinal]
            self.postings[token] = sorted(bs + self._mem.get(token, []))
        return self.postings[token]

    def blocks_with(self, token: int) -> set[int]:
        return set(self._post(token))

    def idf(self, token: int) -> float:
        if token not in self.df:  # a token outside the prepared question (benchmarks)
            self.df[token] = self.db.df([int(token)]).get(int(token), 0) + len(self._mem.get(token, ()))
        return super().idf(token)

    def shortlist(self, tokens: Sequence[int] | np.ndarray, max_blocks: int) -> np.ndarray:
        for t in dict.fromkeys(tokens):
            if self.df.get(t, 0):
                self._post(int(t))
        return super().shortlist(tokens, max_blocks)


class StoredRetriever(Retriever):
    """A session's retriever over its persisted index: nothing is read when the session
    opens; the first question reads the blocks' catalog (no tokens), the sketch rows (one
    memory-mapped file) and the question's postings; chosen blocks' tokens come from
    SQLite. Rows missing (a session from before the index) or damaged are rebuilt from
    the blocks' exact tokens and written back, with one warning line."""

    def __init__(self, db: IndexDB, sketch_path: Path, key_shape: tuple[int, ...] | None = None) -> None:
        super().__init__(key_shape=key_shape)
        self.db = db
        self.file = SketchFile(sketch_path)
        self.pointers: StoredPointers = StoredPointers(db)
        self._loaded = False
        self._ids = np.zeros(0, np.int64)
        self._docs = np.zeros(0, np.int64)
        self._lens = np.zeros(0, np.int64)
        self._keys_of: list[str] = []
        self.repaired = 0  # rows rebuilt from tokens by the last load

    # -- loading --------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Read the catalog again on the next question (documents were replaced)."""
        self._loaded = False

    def _ensure(self) -> None:
        if not self._loaded:
            self._load()

    def _load(self) -> None:
        cat = self.db.catalog()
        ids = np.asarray(cat["ids"], np.int64)
        m, have = self.file.rows(np.asarray(cat["sketch_rows"], np.int64))
        crcs = np.asarray(cat["sketch_crcs"], np.int64)
        ok = have & np.asarray(cat["indexed"], bool)
        for i in np.flatnonzero(ok).tolist():  # every row used is verified (~1 ms per 1000 rows)
            if zlib.crc32(m[i].tobytes()) != crcs[i]:
                ok[i] = False
        keep = np.ones(len(ids), bool)
        bad = np.flatnonzero(~ok)
        self.pointers.reset(ids)
        unsaved: list[tuple[int, np.ndarray]] = []
        if len(bad):
            rows = self.db.rows([int(ids[i]) for i in bad])
            fixes = []
            for i in bad.tolist():
                row = rows.get(int(ids[i]))
                if row is None:  # its tokens are damaged too: never selectable
                    keep[i] = False
                    continue
                m[i] = self.sketches.block_vector(row.tokens)
                fixes.append((i, row))
            try:
                where = self.file.append([m[i] for i, _ in fixes])
                for (_, row), sk in zip(fixes, where):
                    self.db.index_block(row.id, row.tokens, sk)
            except (LocalsymError, OSError, sqlite3.Error) as e:
                log.warning("%s: could not save the rebuilt retrieval index (%s): kept in memory", self.db.path, e)
                unsaved = [(i, row.tokens) for i, row in fixes if not bool(cat["indexed"][i])]
            log.warning(
                "%s: the retrieval index of %d blocks was missing or damaged: rebuilt from their exact tokens",
                self.db.path,
                len(fixes),
            )
        self.repaired = int(len(bad))
        if not keep.all():
            ids, m = ids[keep], m[keep]
            self.pointers.reset(ids)
        new_at = np.cumsum(keep) - 1
        for i, toks in unsaved:
            self.pointers.remember(int(new_at[i]), toks)
        self._ids = ids
        self._docs = np.asarray(cat["doc_ids"], np.int64)[keep]
        self._lens = np.asarray(cat["n_tokens"], np.int64)[keep]
        self._keys_of = [k for k, kp in zip(cat["keys"], keep.tolist()) if kp]
        self.sketches.load(m)
        if self.key_shape is not None:
            self._keys = np.zeros((0, *self.key_shape), np.float16)
            self._has_keys = np.zeros(0, bool)
            for n, a in enumerate((a for a, kp in zip(cat["attn"], keep.tolist()) if kp), start=1):
                self._add_keys(n, a)
        self._loaded = True

    # -- what selection reads ---------------------------------------------------------------------
    @property
    def blocks(self) -> list[BlockRow]:
        """Every selectable block with its tokens (reads them all: benchmarks and tests)."""
        self._ensure()
        rows = self.db.rows(self._ids.tolist())
        return [rows[i] for i in self._ids.tolist() if i in rows]

    def _count(self) -> int:
        self._ensure()
        return len(self._ids)

    def _doc_of(self, b: int) -> int:
        return int(self._docs[b])

    def _len_of(self, b: int) -> int:
        return int(self._lens[b])

    def _rows_of(self, bs: list[int]) -> list[BlockRow | None]:
        rows = self.db.rows([int(self._ids[b]) for b in bs])
        return [rows.get(int(self._ids[b])) for b in bs]

    def rank(self, question: Sequence[int], k: int, query: np.ndarray | None = None) -> tuple[list[int], set[int]]:
        self._ensure()
        self.pointers.prepare(question)
        return super().rank(question, k, query)

    # -- adding (ingest) ------------------------------------------------------------------------------
    def persist(self, tokens: list[np.ndarray]) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """New blocks' sketches, appended to the sketch file: (vector, (row, crc32)) each."""
        vecs = [self.sketches.block_vector(t) for t in tokens]
        return list(zip(vecs, self.file.append(vecs)))

    def add(self, block: BlockRow, vector: np.ndarray | None = None) -> None:
        """A block whose index row (and postings) are written: selectable from now on."""
        if not self._loaded:
            return  # the next load reads it from the index
        self._ids = np.append(self._ids, block.id)
        self._docs = np.append(self._docs, block.doc_id)
        self._lens = np.append(self._lens, block.n_tokens)
        self._keys_of.append(block.key)
        self.pointers.ordinal[block.id] = len(self._ids) - 1
        self.pointers.n_blocks = len(self._ids)
        self.sketches.add_vector(self.sketches.block_vector(block.tokens) if vector is None else vector)
        self._add_keys(len(self._ids), block.attn)

    @property
    def has_keys(self) -> bool:
        self._ensure()
        return super().has_keys
