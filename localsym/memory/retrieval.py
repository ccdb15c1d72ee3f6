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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels_numba import fhrr
from localsym.code_structure import is_code
from localsym.errors import BudgetError, LocalsymError
from localsym.memory import attention_keys, fusion, lexical, semantic
from localsym.memory.index_db import BlockRow, IndexDB
from localsym.memory.phrases import Word, assigned_names, boundary_ok, key_shaped, texts_of, words
from localsym.memory.pinning import needle_like

log = logging.getLogger("localsym.retrieval")

DIM = 1024
SEED = 0x10CA1
LSH_TABLES, LSH_BITS = 16, 10
BRUTE_FORCE_MAX = 16384  # blocks (2M tokens at 128): one core scores 8000 in <5 ms; LSH beyond
RERANK_POOL = 4  # sketch candidates per slot that the attention signal reorders
ATTN_WEIGHT = 0.5  # attention z-score against the sketch's: a weaker signal (bench attention)
SHORTLIST_MIN = 1024  # token postings rescored beside the LSH candidates, at least
PHRASE_MAX = 16  # blocks a key may be found in and still pick its blocks out (beyond: not a key)
# blocks a key may be found in and still make them all needles: a fact's key is stated in a
# few places (RULER's multi-value needles: 4), a name used all over a codebase
# (`click.Context.meta`, `shlex.split`: 7-9 blocks of click) is the fused ranking's to order
# (its words are the lexical signal's), or every use of it came verbatim, with its hops
KEY_BLOCKS = 4
# a needle's next block comes too when the match ends this near its block's end: the value
# after a key ("... is KX-4471-QZ", a UUID, a list of values) may run past the block
SPILL_TOKENS = 48
PHRASE_SCAN_MAX = 1024  # blocks holding all of a key's tokens that are scanned for it, at most
HOP_ROUNDS = 6  # assignment hops followed from the needles (``X2 = X1`` -> where X1 is)
HOP_BLOCKS = 16  # blocks the hops may add
HOP_FROM = 2  # hops start from a key stated in this many blocks at most (a value's chain, not a name in use)
LEX_POOL = 64  # lexical candidates fused
SKETCH_POOL = 32  # sketch candidates fused
FALLBACK_NEEDLES = 2  # blocks a question's rare plain words may make needles (they must hold a value)


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

    def count(self, token: int) -> int:
        """How many blocks hold ``token``."""
        return self.df.get(token, 0)

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


def short_path(source: str) -> str:
    """A file's last three path parts: its words for the lexical index (a home folder's
    parts are in every block's path and name none)."""
    return "/".join(Path(source).parts[-3:])


@dataclass
class Found:
    """A question's exact matches: the blocks holding one of its keys as a whole phrase
    (or, without keys, its rarest tokens), the blocks its rare tokens hit, and the
    lookalikes left out."""

    needles: dict[int, float] = field(default_factory=dict)  # block -> weight, for ordering
    hits: dict[int, float] = field(default_factory=dict)  # block -> idf sum of the rare tokens it holds
    shadowed: set[int] = field(default_factory=set)  # same-shaped blocks without any asked key
    keys: list[str] = field(default_factory=list)  # the key words looked for
    matched: dict[str, int] = field(default_factory=dict)  # key word -> blocks holding it
    hops: dict[int, str] = field(default_factory=dict)  # block reached by a hop -> the name that led there
    # block -> where its last key or hop match ends (token offset): a value that follows the
    # match can run into the next block only from near the end (blocks not here: unknown)
    ends: dict[int, int] = field(default_factory=dict)

    def matched_at(self, occ: list[tuple[int, int, int]]) -> None:
        for b, off, n in occ:
            self.ends[b] = max(self.ends.get(b, 0), off + n)

    def order(self) -> list[int]:
        return sorted(self.needles, key=lambda b: (-self.needles[b], b))


class Retriever:
    """The selection policy of the retrieval issue, behind the tiered memory's interface.

    ``piece`` (token id -> its text) turns on exact key phrases and assignment hops;
    ``tokenize`` (text -> token ids, no BOS) lets a hop look a name up however the text
    around it tokenizes it."""

    def __init__(
        self,
        needle_df: int = 4,
        key_shape: tuple[int, ...] | None = None,
        piece: Callable[[int], str] | None = None,
        tokenize: Callable[[str], list[int]] | None = None,
    ) -> None:
        self._blocks: list[BlockRow] = []
        self.pointers = PointerIndex()
        self.sketches = SketchIndex()
        self.needle_df = needle_df
        self.last_ms = 0.0
        self.last_needles: set[str] = set()  # keys of the needle blocks chosen
        self.last_scores: dict[str, float] = {}  # chosen block key -> its sketch score for the question
        self.last_found = Found()
        self.last_shadowed: set[str] = set()  # keys of the lookalikes left out
        self._last_q: np.ndarray | None = None
        # attention-native signal: representative keys per block (zeros where a block has none)
        self.key_shape = key_shape
        self._keys = np.zeros((0, *key_shape), np.float16) if key_shape else None
        self._has_keys = np.zeros(0, bool)
        self._piece_fn, self._tokenize = piece, tokenize
        self._pieces: dict[int, str] = {}
        self._words_of: dict[int, tuple[str, list[int], list[Word]]] = {}  # block -> its text, offsets, words
        # questions in words: the lexical signal, fused with the others (memory/fusion.py)
        self._lex: lexical.LexicalIndex | None = None  # in memory; a session's lives in its SQLite
        # the semantic signal: each block's static embedding (memory/semantic.py), in block order
        self._sem_rows: list[np.ndarray] = []
        self._sem_m: np.ndarray | None = None  # the rows as questions meet them (semantic.matrix)
        self._sem_code = np.zeros(0, bool)
        self.weights = dict(fusion.WEIGHTS)
        self.k_max, self.margin = fusion.K_MAX, fusion.MARGIN
        self.last_fused = fusion.Fused()
        self.last_signals: dict[str, str] = {}  # chosen block key -> the signal that chose it

    @property
    def blocks(self) -> list[BlockRow]:
        return self._blocks

    def _count(self) -> int:
        return len(self._blocks)

    def _doc_of(self, b: int) -> int:
        return self._blocks[b].doc_id

    def _len_of(self, b: int) -> int:
        return self._blocks[b].n_tokens

    def _key_of(self, b: int) -> str:
        return self._blocks[b].key

    def _rows_of(self, bs: list[int]) -> list[BlockRow | None]:
        return [self._blocks[b] for b in bs]

    def _tokens(self, bs: list[int]) -> dict[int, np.ndarray]:
        """Exact tokens of blocks ``bs`` (a damaged block is left out)."""
        return {b: self._blocks[b].tokens for b in bs}

    def add(self, block: BlockRow, vector: np.ndarray | None = None) -> None:
        self._blocks.append(block)
        self.pointers.add(block.tokens)
        self.sketches.add_vector(self.sketches.block_vector(block.tokens) if vector is None else vector)
        self._add_keys(len(self._blocks), block.attn)
        if self._piece_fn is not None:
            if self._lex is None:
                self._lex = lexical.LexicalIndex(sqlite3.connect(":memory:", check_same_thread=False))
            text = texts_of(block.tokens.tolist(), self._piece)[0]
            self._lex.add(len(self._blocks) - 1, text, short_path(block.source), (block.label,) if block.label else ())
            self._sem_add(semantic.vectors([text]))

    def _sem_add(self, v: np.ndarray | None) -> None:
        """One more block's semantic vector; without one (the signal off) the rows stop
        matching the blocks and the signal stays silent."""
        if v is not None and len(self._sem_rows) == self._count() - 1:
            self._sem_rows.append(v.reshape(semantic.DIM))
            self._sem_m = None

    def _sem_catch_up(self) -> None:
        """Bring the semantic rows level with the blocks (a session's retriever reads the
        vectors written as its blocks were loaded)."""

    def _semantic(self, question: Sequence[int]) -> fusion.Signal | None:
        """Blocks by the question's meaning (memory/semantic.py): (block numbers, scores)."""
        if self._piece_fn is None or self.weights.get("semantic", 0.0) <= 0:
            return None
        self._sem_catch_up()
        if len(self._sem_rows) != self._count():
            return None
        text = semantic.question_text(texts_of([int(t) for t in question], self._piece)[0])
        q = semantic.vectors([text]) if text else None
        if q is None:
            return None
        if self._sem_m is None:
            rows = np.stack(self._sem_rows) if self._sem_rows else np.zeros((0, semantic.DIM), np.float16)
            self._sem_code = self._code_rows(len(rows))
            self._sem_m = semantic.matrix(rows, self._sem_code)
        return semantic.scores(self._sem_m, q[0], code=self._sem_code)

    def _code_rows(self, n: int) -> np.ndarray:
        """Which of the first ``n`` blocks are code (by their file's suffix)."""
        return np.array([is_code(b.source) for b in self._blocks[:n]], bool)

    def _lexical(self, terms: list[str], limit: int) -> tuple[np.ndarray, np.ndarray]:
        """Blocks by BM25 over their words: (block numbers, scores), best first."""
        got = self._lex.search(terms, limit) if self._lex is not None else []
        return np.array([b for b, _ in got], np.int64), np.array([s for _, s in got], np.float32)

    def question_terms(self, question: Sequence[int]) -> list[str]:
        if self._piece_fn is None:
            return []
        return lexical.query_terms(texts_of([int(t) for t in question], self._piece)[0])

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

    # -- exact phrases ----------------------------------------------------------------------------
    def _piece(self, t: int) -> str:
        p = self._pieces.get(t)
        if p is None:
            assert self._piece_fn is not None  # phrases are looked for only with pieces
            p = self._pieces[t] = self._piece_fn(t)
        return p

    def _rare_max(self) -> int:
        return max(self.needle_df, self._count() // 1000)

    def key_words(self, tokens: Sequence[int]) -> list[tuple[str, tuple[int, ...]]]:
        """The keys ``tokens`` name (see ``phrases``), each with the token run spelling it."""
        return [(text, run) for text, run, _ in self._keys_in(tokens)]

    def _keys_in(self, tokens: Sequence[int]) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
        """``key_words``, each with the (up to) three tokens before it: its frame."""
        if self._piece_fn is None:
            return []
        out: dict[tuple[int, ...], tuple[str, tuple[int, ...]]] = {}
        toks = [int(t) for t in tokens]
        for w in words(toks, self._piece):
            run = tuple(toks[w.start : w.end])
            if run not in out and self.is_key(w.text, run):
                out[run] = (w.text, tuple(toks[max(0, w.start - 3) : w.start]))
        return [(text, run, frame) for run, (text, frame) in out.items()]

    def is_key(self, text: str, run: Sequence[int]) -> bool:
        """A word shaped like an identifier or a value, or spelled with several tokens one
        of which is rare here."""
        if key_shaped(text):
            return True
        # a made-up name (Zorblax) spelled with a rare token is one; a plain word is not,
        # however rare here ("multipart", "following"): the lexical signal weighs those
        if text.islower() or len(run) < 2:
            return False
        rare = self._rare_max()
        return any(0 < self.pointers.count(int(t)) <= rare for t in run)

    def find_phrase(self, run: Sequence[int]) -> list[tuple[int, int]] | None:
        """Where the token run ``run`` occurs contiguously, as a whole word: (block, offset)
        each. Candidates are the blocks whose postings hold every token of it, scanned on
        their exact tokens; None when more than ``PHRASE_SCAN_MAX`` blocks would be."""
        if not run or self._piece_fn is None:
            return []
        if min(self.pointers.count(int(t)) for t in run) == 0:
            return []  # a token found nowhere: not in a block, nor across two
        cand = self._blocks_holding_all(run)
        if len(cand) > PHRASE_SCAN_MAX:
            return None
        arr = np.asarray(run, np.int32)
        first, last = self._piece(int(arr[0])), self._piece(int(arr[-1]))
        out = []
        for b, bt in sorted(self._tokens(sorted(cand)).items()):
            n = len(bt) - len(arr) + 1
            if n <= 0:
                continue
            for s in np.flatnonzero(bt[:n] == arr[0]).tolist():
                if len(arr) > 1 and not np.array_equal(bt[s : s + len(arr)], arr):
                    continue
                prev = self._piece(int(bt[s - 1])) if s > 0 else None
                nxt = self._piece(int(bt[s + len(arr)])) if s + len(arr) < len(bt) else None
                if boundary_ok(prev, first, last, nxt):
                    out.append((b, s))
        return sorted(set(out) | set(self._find_across(arr, first, last)))

    def _blocks_holding_all(self, tokens: Iterable[int]) -> set[int]:
        """The blocks whose postings hold every one of ``tokens``, intersected rarest first."""
        p = self.pointers
        order = sorted({int(t) for t in tokens}, key=p.count)
        cand = p.blocks_with(order[0]) if order and p.count(order[0]) else set()
        for t in order[1:]:
            if not cand:
                break
            cand &= p.blocks_with(t)
        return cand

    def _find_across(self, arr: np.ndarray, first: str, last: str) -> list[tuple[int, int]]:
        """Where the run ``arr`` is cut by a block boundary: its head ends a block and its tail
        starts the next block of the same document, as (first block, offset) each. Candidates
        come from the postings of whichever part is rarer; a cut whose rarer part is in more
        than ``PHRASE_SCAN_MAX`` blocks is not looked at."""
        counts = [self.pointers.count(int(t)) for t in arr]
        n = self._count()
        out = []
        for k in range(1, len(arr)):
            head, tail = arr[:k], arr[k:]
            side_is_head = min(counts[:k]) <= min(counts[k:])
            cand = self._blocks_holding_all(head if side_is_head else tail)
            if len(cand) > PHRASE_SCAN_MAX:
                continue
            pairs = sorted({(b, b + 1) if side_is_head else (b - 1, b) for b in cand})
            pairs = [(a, c) for a, c in pairs if 0 <= a and c < n and self._doc_of(a) == self._doc_of(c)]
            got = self._tokens(sorted({x for pair in pairs for x in pair}))
            for a, c in pairs:
                ta, tc = got.get(a), got.get(c)
                if ta is None or tc is None or len(ta) < k or len(tc) < len(tail):
                    continue
                if not (np.array_equal(ta[len(ta) - k :], head) and np.array_equal(tc[: len(tail)], tail)):
                    continue
                prev = self._piece(int(ta[len(ta) - k - 1])) if len(ta) > k else None
                nxt = self._piece(int(tc[len(tail)])) if len(tc) > len(tail) else None
                if boundary_ok(prev, first, last, nxt):
                    out.append((a, len(ta) - k))
        return out

    def _find_word(self, text: str, run: Sequence[int]) -> list[tuple[int, int, int]] | None:
        """Where the word ``text`` (spelled ``run`` where it was read) occurs: (block,
        offset, length) each, however the text around it tokenizes it (after a space, at a
        line's start); None when it is too common to look for."""
        runs = {tuple(int(t) for t in run)} if len(run) else set()
        if self._tokenize is not None:
            runs |= {tuple(self._tokenize(v)) for v in (text, " " + text)}
        occ: list[tuple[int, int, int]] = []
        for r in sorted(runs):
            got = self.find_phrase(r)
            if got is None:
                return None
            occ += [(b, o, len(r)) for b, o in got]
        return occ

    def _block_words(self, b: int, bt: np.ndarray) -> tuple[str, list[int], list[Word]]:
        got = self._words_of.get(b)
        if got is None:
            if len(self._words_of) > 4096:
                self._words_of.clear()
            text, offs = texts_of(bt.tolist(), self._piece)
            got = self._words_of[b] = (text, offs, words(bt.tolist(), self._piece))
        return got

    def _hops(self, found: Found, where: list[tuple[int, int, int]], seen: set[str]) -> None:
        """Follow assignments from the lines holding the matches in ``where`` ((block,
        offset, length) each): a name such a line binds or reads (``VAR X2 = VAR X1``) is
        looked up as a phrase, and the blocks holding it become needles too, for up to
        ``HOP_ROUNDS`` rounds and ``HOP_BLOCKS`` blocks."""
        done: set[tuple[int, int]] = set()
        frontier = where
        for _ in range(HOP_ROUNDS):
            nxt: list[tuple[int, int, int]] = []
            toks = self._tokens(sorted({b for b, _, _ in frontier}))
            for b, off, _ in frontier:
                bt = toks.get(b)
                if bt is None:
                    continue
                text, offs, ws = self._block_words(b, bt)
                c = offs[min(off, len(offs) - 1)]
                a = text.rfind("\n", 0, c) + 1
                e = text.find("\n", c)
                e = len(text) if e < 0 else e
                if (b, a) in done:
                    continue
                done.add((b, a))
                for name in assigned_names(text[a:e]):
                    if name in seen or len(name) < 2:
                        continue
                    seen.add(name)
                    run = next(
                        (
                            tuple(int(t) for t in bt[w.start : w.end])
                            for w in ws
                            if w.text == name and a <= offs[w.start] < e
                        ),
                        (),
                    )
                    occ = self._find_word(name, run)
                    if not occ or len({b2 for b2, _, _ in occ}) > KEY_BLOCKS:  # a name used all over: no link
                        continue
                    for b2, _, _ in occ:
                        if b2 not in found.needles:
                            if len(found.hops) >= HOP_BLOCKS:
                                return
                            found.hops[b2] = name
                            found.needles[b2] = 0.0
                    found.matched_at(occ)
                    nxt += occ
            frontier = nxt
            if not frontier:
                return

    def find_needles(self, question: Sequence[int], keys_only: bool = False) -> Found:
        """The question's needle blocks. With keys (``key_words``) found as whole phrases,
        the needles are every block holding one of them (all values of a key, every key
        of a multi-key question), then the blocks reached from their assignment lines
        (``_hops``); blocks its rare tokens hit as strongly as the needles' own threshold
        but holding none of its keys are same-shaped lookalikes (a distractor ``One of
        the magic numbers for OTHER-KEY``) and are left out of this question's working set.
        Without keys found, the needles are the blocks holding its rarest tokens
        (``keys_only``: none then)."""
        found = Found()
        rare = self.pointers.rare(question, self._rare_max())
        for t in rare:
            w = self.pointers.idf(t)
            for b in self.pointers.blocks_with(t):
                found.hits[b] = found.hits.get(b, 0.0) + w
        where: list[tuple[int, int, int]] = []
        seen: set[str] = set()
        frames: list[tuple[int, ...]] = []
        for text, run, frame in self._keys_in(question):
            found.keys.append(text)
            seen.add(text)
            occ = self._find_word(text, run)
            blocks = {b for b, _, _ in occ or ()}
            if occ is None or not blocks or len(blocks) > PHRASE_MAX:
                continue
            if len(blocks) > KEY_BLOCKS:
                found.matched[text] = len(blocks)
                continue
            found.matched[text] = len(blocks)
            weight = sum(max(self.pointers.idf(t), 0.1) for t in set(run))
            for b in blocks:
                found.needles[b] = found.needles.get(b, 0.0) + weight
            found.matched_at(occ)
            if len(blocks) <= HOP_FROM:
                where += occ
            if len(frame) >= 2:
                frames.append(frame)
        if found.needles:
            # lookalikes: blocks the rare tokens hit as hard as a needle's own threshold, and
            # blocks holding a key's frame (`numbers for`) followed by another key
            top = max(found.hits.values(), default=0.0)
            found.shadowed = {b for b, s in found.hits.items() if s >= 0.5 * top}
            for frame in frames:  # a frame common enough to be no frame at all is none
                lookalike = {b for b, _ in self.find_phrase(frame) or ()}
                if len(lookalike) <= PHRASE_MAX:
                    found.shadowed |= lookalike
            self._hops(found, where, seen)
            found.shadowed -= set(found.needles)
        elif found.hits and not keys_only:
            # no key named: the rare words pick needles only when they single out one or
            # two blocks (a fact stated once: "the pass key is 71432"), and only blocks
            # that hold a value that must come back exact; words spread over many blocks
            # ("manager", "indentation") are the fused ranking's, restored, not re-prefilled
            top = max(found.hits.values())
            best = sorted((b for b, s in found.hits.items() if s >= 0.5 * top), key=lambda b: -found.hits[b])
            if len(best) <= FALLBACK_NEEDLES:
                toks = self._tokens(best)
                if self._piece_fn is None:  # token ids alone: no words to judge by, as before
                    valued = [b for b in best if b in toks]
                else:
                    valued = [b for b in best if b in toks and needle_like(self._block_words(b, toks[b])[0])]
                found.needles = {b: found.hits[b] for b in valued}
        return found

    def rank(self, question: Sequence[int], k: int, query: np.ndarray | None = None) -> tuple[list[int], set[int]]:
        """Block numbers, best first, and which of them are needle blocks: the needles, then
        the blocks the fused signals (lexical, sketch, attention, rare tokens) put within
        the margin of the best, ``k`` at most."""
        n = self._count()
        self._last_q = None
        self.last_fused = fusion.Fused()
        if n == 0:
            self.last_found = Found()
            return [], set()
        found = self.last_found = self.find_needles(question)
        hits, out = found.hits, found.shadowed
        needles = found.order()
        signals: dict[str, fusion.Signal] = {}
        terms = self.question_terms(question)
        if terms:
            signals["lexical"] = self._lexical(terms, LEX_POOL)
        sem = self._semantic(question)
        if sem is not None and len(sem[0]):
            signals["semantic"] = sem
        if hits:
            signals["rare"] = (list(hits), [hits[b] for b in hits])
        q_tokens = np.asarray(list(dict.fromkeys(question)), np.int64)
        weights = np.array([self.pointers.idf(t) for t in q_tokens.tolist()], np.float32)
        keep = weights > 0
        # the sketch (a bag of the question's tokenizer pieces) is a blurred copy of the
        # lexical signal where that one has words to go by, and fused with it it lost blocks
        # (bench code: source hit 0.78 without it, 0.70 with it at 0.35): it speaks only when
        # the words found nothing (a question in a script the lexical index does not split),
        # and neither did the meaning: beside the semantic signal it only adds token-overlap
        # noise (a question on retries sent to colour code that shared its brackets)
        if keep.any() and not len(signals.get("lexical", ((),))[0]) and "semantic" not in signals:
            q = self._last_q = self.sketches.sketch(q_tokens[keep], weights[keep])
            signals["sketch"] = self.search(q, q_tokens[keep], SKETCH_POOL)
        if query is not None and self.has_keys:
            if signals:  # attention reorders what the other signals found
                cand = np.unique(np.concatenate([np.asarray(ids, np.int64) for ids, _ in signals.values()]))
            else:  # nothing of the question is in the index: attention alone
                cand = np.flatnonzero(self._has_keys[:n])
            att, mask = self.attention(cand, query)
            if mask.sum() > 1:
                signals["attention"] = (cand[mask], _z(att, mask)[mask])
            elif mask.any():
                signals["attention"] = (cand[mask], np.ones(int(mask.sum()), np.float32))
        f = self.last_fused = fusion.fuse(signals, self.weights, set(needles) | out)
        # needles and the blocks after them count toward the cap: ``k_max`` in all, unless
        # the needles alone are more (every value of an asked key comes)
        with_followers = len(self._with_followers(needles, set(needles), found)[1])
        room = max(min(k, self.k_max) - with_followers, 0 if needles else 1)
        # with needles found, nothing else has to come: only what scores near them
        return needles + fusion.cut(f, room, self.margin, 0 if needles else fusion.K_MIN), set(found.needles)

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

    def _with_followers(self, order: list[int], needles: set[int], found: Found) -> tuple[list[int], set[int]]:
        """A needle's value may run past its block's end (`KEY = "ab` | `cd"`): the next
        block of the same document comes right after it, verbatim too, when the match ends
        within ``SPILL_TOKENS`` of the end (or where it ends is not known)."""
        n = self._count()
        ends = found.ends
        follow = {
            b + 1
            for b in needles
            if b + 1 < n
            and self._doc_of(b + 1) == self._doc_of(b)
            and (b not in ends or self._len_of(b) - ends[b] <= SPILL_TOKENS)
        }
        out = []
        for b in order:
            out.append(b)
            if b + 1 in follow:
                out.append(b + 1)
        return out, set(needles) | follow

    def select(self, question: Sequence[int], budget_tokens: int, query: np.ndarray | None = None) -> list[BlockRow]:
        t0 = time.perf_counter()
        ranked, needles = self.rank(question, k=self.k_max, query=query)
        order, needles = self._with_followers(ranked, needles, self.last_found)
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
        # in their documents' order, the documents holding a needle last: what the question
        # asks about sits nearest to it (a small model reads past a needle buried among
        # pages of code), and a document's own blocks stay in their order
        # the best-scored document nearest the question too (its blocks still in their order)
        f = self.last_fused
        near = {self._doc_of(b) for b in chosen if b in needles}
        best: dict[int, float] = {}
        for b in chosen:
            d = self._doc_of(b)
            best[d] = max(best.get(d, 0.0), f.scores.get(b, 0.0))
        # within a document of prose (a manual, a mail) its best passage comes last too: a
        # page stands alone where a function read out of order does not (bench docs' answers
        # 0.48 -> 0.56 at the same sources; bench code's fell from 0.375 to 0.25 in score order)
        row_of = dict(zip(chosen, self._rows_of(chosen)))

        def place(b: int) -> tuple[bool, float, int, float, int]:
            d, r = self._doc_of(b), row_of[b]
            prose = r is not None and not is_code(r.source)
            # a needle last of all in its document: the question asks about it
            return (d in near, best[d], d, (2.0 if b in needles else f.scores.get(b, 0.0)) if prose else 0.0, b)

        chosen.sort(key=place)
        if not near and chosen:
            # with no needle, the best block itself last (its document's other blocks stay
            # before it in their order): a small model names what it read last. bench code,
            # SmolLM2, 120 questions (seeds 0-2), the same sets: answers 0.317 -> 0.433
            top = max(chosen, key=lambda b: f.scores.get(b, 0.0))
            chosen.remove(top)
            chosen.append(top)
        rows = [row_of[b] for b in chosen]
        out = [r for r in rows if r is not None]  # a block whose tokens are damaged is left out
        self.last_needles = {r.key for b, r in zip(chosen, rows) if r is not None and b in needles}
        self.last_shadowed = {self._key_of(b) for b in self.last_found.shadowed}
        self.last_scores = {r.key: 1.0 if b in needles else f.scores.get(b, 0.0) for b, r in zip(chosen, rows) if r}
        hops = self.last_found.hops
        self.last_signals = {
            r.key: ("hop" if b in hops else "needle") if b in needles else f.signal.get(b, "follower")
            for b, r in zip(chosen, rows)
            if r is not None
        }
        self.last_ms = (time.perf_counter() - t0) * 1000
        return out

    def more(self, tokens: Sequence[int], have: set[str]) -> tuple[list[BlockRow], Found]:
        """For a refresh during decoding: the needle blocks the keys of ``tokens`` (the
        question and the answer so far) lead to, with their followers and hops, that are
        not among ``have`` (block keys, with the question's lookalikes), best first."""
        if self._count() == 0:
            return [], Found()
        found = self.find_needles(tokens, keys_only=True)
        order, _ = self._with_followers(found.order(), set(found.needles), found)
        fresh = [b for b in dict.fromkeys(order) if self._key_of(b) not in have]
        return [r for r in self._rows_of(fresh) if r is not None], found


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

    def count(self, token: int) -> int:
        if token not in self.df:  # a token outside the prepared question (a hop's name, benchmarks)
            self.df[token] = self.db.df([int(token)]).get(int(token), 0) + len(self._mem.get(token, ()))
        return self.df[token]

    def idf(self, token: int) -> float:
        self.count(token)
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

    def __init__(
        self,
        db: IndexDB,
        sketch_path: Path,
        key_shape: tuple[int, ...] | None = None,
        piece: Callable[[int], str] | None = None,
        tokenize: Callable[[str], list[int]] | None = None,
    ) -> None:
        super().__init__(key_shape=key_shape, piece=piece, tokenize=tokenize)
        self.db = db
        self.file = SketchFile(sketch_path)
        self.pointers: StoredPointers = StoredPointers(db)
        self._loaded = False
        self._ids = np.zeros(0, np.int64)
        self._docs = np.zeros(0, np.int64)
        self._lens = np.zeros(0, np.int64)
        self._keys_of: list[str] = []
        self._token_cache: dict[int, np.ndarray] = {}  # block number -> exact tokens (phrase scans)
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
        self._sem_rows, self._sem_m = [], None
        self._sem_extend(ids, [v for v, kp in zip(cat["sem"], keep.tolist()) if kp])
        self.sketches.load(m)
        self._token_cache.clear()
        self._words_of.clear()
        self._lex_missing()
        if self.key_shape is not None:
            self._keys = np.zeros((0, *self.key_shape), np.float16)
            self._has_keys = np.zeros(0, bool)
            for n, a in enumerate((a for a, kp in zip(cat["attn"], keep.tolist()) if kp), start=1):
                self._add_keys(n, a)
        self._loaded = True

    def _sem_catch_up(self) -> None:
        self._ensure()
        have = len(self._sem_rows)
        if have < len(self._ids):  # blocks added since the catalog was read
            ids = self._ids[have:]
            self._sem_extend(ids, self.db.sems(ids.tolist()))

    def _sem_extend(self, ids: np.ndarray, stored: list[bytes | None]) -> None:
        """The semantic rows of blocks ``ids`` (the next ones in block order), from their
        stored vectors; those missing (blocks from before them) or failing their checksum
        are made from the exact tokens and written back (on a disk that takes no writes,
        kept in memory). Where the signal is off the rows stay short, and it stays silent."""
        if self._piece_fn is None:
            return
        rows: list[np.ndarray | None] = [
            np.frombuffer(v, np.float16) if v is not None and len(v) == 2 * semantic.DIM else None for v in stored
        ]
        todo = [i for i, r in enumerate(rows) if r is None]
        for a in range(0, len(todo), 256):
            part = todo[a : a + 256]
            got = self.db.rows([int(ids[i]) for i in part])
            toks = [got[int(ids[i])].tokens.tolist() if int(ids[i]) in got else [] for i in part]
            texts = [texts_of(t, self._piece)[0] for t in toks]
            vecs = semantic.vectors(texts)
            if vecs is None:
                return  # the signal is off: it stays silent
            for i, v in zip(part, vecs):
                rows[i] = v
            # a block whose tokens cannot be read gets a zero row for now, never a stored one:
            # once its tokens are repaired its vector is made again
            keep = [(int(ids[i]), v.tobytes()) for i, v in zip(part, vecs) if int(ids[i]) in got]
            try:
                self.db.set_sem(keep)
            except (LocalsymError, OSError, sqlite3.Error) as e:
                log.warning("%s: could not save %d semantic vectors (%s): kept in memory", self.db.path, len(keep), e)
        if todo:
            log.info("%s: the semantic vectors of %d blocks made from their exact tokens", self.db.path, len(todo))
        self._sem_rows += [r for r in rows if r is not None]
        self._sem_m = None

    def _lex_missing(self) -> None:
        """Put the words of blocks indexed before the lexical index (or after it was found
        damaged) into it, from their exact tokens; on a disk that takes no writes they are
        left out of the lexical signal only, with one warning line."""
        todo = self.db.unlexed() if self._piece_fn is not None else []
        if not todo:
            return
        try:
            for i in range(0, len(todo), 256):
                rows = self.db.rows(todo[i : i + 256])
                self.db.lex_blocks(
                    [
                        (r.id, texts_of(r.tokens.tolist(), self._piece)[0], short_path(r.source), r.label)
                        for r in rows.values()
                    ]
                )
        except (LocalsymError, OSError, sqlite3.Error) as e:
            log.warning("%s: could not index the words of %d blocks (%s)", self.db.path, len(todo), e)
            return
        log.info("%s: the words of %d blocks indexed from their exact tokens", self.db.path, len(todo))

    def _lexical(self, terms: list[str], limit: int) -> tuple[np.ndarray, np.ndarray]:
        got = [(self.pointers.ordinal.get(i), s) for i, s in self.db.lex_search(terms, limit)]
        got = [(b, s) for b, s in got if b is not None]  # a block of a replaced document is gone
        return np.array([b for b, _ in got], np.int64), np.array([s for _, s in got], np.float32)

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

    def _code_rows(self, n: int) -> np.ndarray:
        code = {d: is_code(src) for d, src in self.db.sources_by_doc().items()}
        out = np.zeros(n, bool)
        docs = self._docs[:n]
        out[: len(docs)] = [code.get(int(d), False) for d in docs]
        return out

    def _key_of(self, b: int) -> str:
        return self._keys_of[b]

    def _rows_of(self, bs: list[int]) -> list[BlockRow | None]:
        rows = self.db.rows([int(self._ids[b]) for b in bs])
        return [rows.get(int(self._ids[b])) for b in bs]

    def _tokens(self, bs: list[int]) -> dict[int, np.ndarray]:
        missing = [b for b in bs if b not in self._token_cache]
        if missing:
            if len(self._token_cache) + len(missing) > 2 * PHRASE_SCAN_MAX:
                self._token_cache.clear()
            for b, r in zip(missing, self._rows_of(missing)):
                if r is not None:
                    self._token_cache[b] = r.tokens
        return {b: self._token_cache[b] for b in bs if b in self._token_cache}

    def more(self, tokens: Sequence[int], have: set[str]) -> tuple[list[BlockRow], Found]:
        self._ensure()
        self.pointers.prepare(tokens)
        return super().more(tokens, have)

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
        self._add_keys(len(self._ids), block.attn)  # its semantic vector is read when asked for

    @property
    def has_keys(self) -> bool:
        self._ensure()
        return super().has_keys
