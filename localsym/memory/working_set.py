"""The working set: what llama.cpp's context (the hot tier) holds, and how it gets there.

Sequence 0 holds, at contiguous positions: the sink (BOS and the system prompt's opening),
the document blocks chosen for the question in their original order, the close of the
system turn, the recent conversation, then the question and its answer. For a question
the set is chosen (pointer index, FHRR sketches, attention keys), the longest prefix the
context already holds is kept and the rest dropped, and each wanted block comes in one of
three ways: restored from the block store and position-shifted (no recomputation),
re-prefilled from its exact tokens when it holds one of the question's rare tokens (a
needle is then read from exact KV, never a quantized copy), or rebuilt from its tokens
when its file is damaged or missing.

Ingest uses the same context for a document's sliding window of earlier blocks.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from localsym.errors import LocalsymError
from localsym.memory.block_store import BlockStore
from localsym.memory.encoded_block import EncodedBlock
from localsym.memory.hot import REBUILD, HotContext, Segment
from localsym.memory.index_db import BlockRow
from localsym.memory.query_probe import AttentionSignal
from localsym.memory.retrieval import Retriever, StoredRetriever
from localsym.runtime.context_pool import AnyContext

log = logging.getLogger("localsym.memory")


@dataclass
class Arranged:
    """What one question's working set is, and how its blocks came in."""

    docs: list[BlockRow] = field(default_factory=list)
    recent: list[BlockRow] = field(default_factory=list)
    restored: int = 0
    reinjected: int = 0  # needle blocks re-prefilled from their exact tokens
    recomputed: int = 0  # damaged or missing blocks rebuilt
    select_ms: float = 0.0
    probe_ms: float = 0.0  # the question's probe decode for attention-native scoring
    # per document block chosen: (block, its sketch score for the question, "restored" or "reinjected")
    sources: list[tuple[BlockRow, float, str]] = field(default_factory=list)
    budget: int = 0  # tokens of documents the set may hold
    needles: set[str] = field(default_factory=set)  # keys of the blocks re-prefilled verbatim
    shadowed: set[str] = field(default_factory=set)  # keys of the question's lookalikes, left out
    scores: dict[str, float] = field(default_factory=dict)  # block key -> its fused score (needles 1)
    signals: dict[str, str] = field(default_factory=dict)  # block key -> what chose it (lexical, needle...)


@dataclass
class Refresh:
    """What one decode-time refresh changed."""

    added: list[BlockRow]
    dropped: list[BlockRow]
    restored: int  # blocks brought back from the store (the new ones, and those after the first dropped)
    reinjected: int  # blocks re-prefilled from their exact tokens
    select_ms: float
    ms: float  # the whole refresh: selection and bringing blocks in


class WorkingSet:
    def __init__(
        self,
        ctx: AnyContext,
        n_caches: int,
        store: BlockStore,
        sink: list[int],
        close: list[int],
        attn: AttentionSignal | None,
        pinned: Callable[[np.ndarray], bool],
        doc_rows: Callable[[BlockRow], list[BlockRow]],
        make_selector: Callable[[tuple[int, ...] | None], Retriever] | None = None,
    ) -> None:
        self.ctx, self.store = ctx, store
        self.hot = HotContext(ctx, n_caches)
        self.sink, self.close = sink, close
        self.attn = attn
        self._pinned = pinned
        self._doc_rows = doc_rows  # a block's document, in order (for rebuilding it in context)
        self._make_selector = make_selector or (lambda shape: Retriever(key_shape=shape))
        self.selector = self._new_selector()
        self.recomputed = 0  # blocks rebuilt so far (any path)
        self.repaired: list[BlockRow] = []  # blocks rebuilt because their stored KV was damaged
        self.last: Arranged | None = None  # the latest question's set (a refresh changes it)
        self.hot.decode("sink", sink)

    def reset(self) -> None:
        """The context lost this set (a context shared with other sessions gave its room
        away): start again from the sink; the next question brings its blocks back."""
        self.last = None
        self.hot.truncate(0)  # and what a reset that failed midway left
        self.hot.decode("sink", self.sink)

    def _new_selector(self) -> Retriever:
        return self._make_selector(self.attn.shape if self.attn else None)

    def index(self, rows: Sequence[BlockRow], fresh: bool = False, vectors: Sequence[np.ndarray] | None = None) -> None:
        """Make ``rows`` selectable (``vectors``: their sketches, when computed already);
        ``fresh`` starts the index over (files replaced; a persisted index is read again)."""
        if fresh:
            if isinstance(self.selector, StoredRetriever):
                self.selector.invalidate()
            else:
                self.selector = self._new_selector()
        for i, r in enumerate(rows):
            self.selector.add(r, None if vectors is None else vectors[i])

    # -- a question's working set ------------------------------------------------------------
    def arrange_for(
        self,
        question: list[int],
        reserve: int,
        docs_budget: int | None,
        turns: list[BlockRow],
        recent_tokens: int,
        block_tokens: int,
    ) -> Arranged:
        n_ctx = self.ctx.n_ctx
        free = n_ctx - len(self.sink) - len(self.close) - reserve - block_tokens - 32
        if free <= 0:
            raise LocalsymError(f"the question and answer do not fit the {n_ctx}-token hot context: raise -c")
        out = Arranged()
        used = 0
        for turn in reversed(turns):
            if used + turn.n_tokens > min(recent_tokens, free // 2):
                break
            out.recent.insert(0, turn)
            used += turn.n_tokens
        budget = min(docs_budget or n_ctx // 2, free - used)
        query = None
        # the probe decode only when the attention signal counts (fusion.WEIGHTS: off by default)
        if self.attn is not None and self.selector.has_keys and self.selector.weights.get("attention", 0.0) > 0:
            t0 = time.perf_counter()
            query = self.attn.query(question)  # the question's own queries, from a probe decode
            out.probe_ms = (time.perf_counter() - t0) * 1000
        out.docs = self.selector.select(question, max(budget, 0), query)
        out.select_ms = self.selector.last_ms
        out.budget = max(budget, 0)
        out.needles = set(self.selector.last_needles)
        out.scores = dict(self.selector.last_scores)
        out.shadowed = set(self.selector.last_shadowed)
        out.signals = dict(self.selector.last_signals)
        before = self.recomputed
        self._bring(out)
        out.sources = [
            (r, out.scores.get(r.key, 0.0), "reinjected" if r.key in out.needles else "restored") for r in out.docs
        ]
        out.recomputed = self.recomputed - before
        self.last = out
        return out

    def _bring(self, out: Arranged) -> tuple[int, int]:
        """Make the context hold the sink, ``out.docs``, the close of the system turn and
        ``out.recent``: the longest prefix it holds already stays, the rest comes in
        (needles re-prefilled, the others restored). Returns (restored, re-injected)."""
        want: list[tuple[str, BlockRow | None]] = [
            ("sink", None),
            *[(r.key, r) for r in out.docs],
            ("close", None),
            *[(r.key, r) for r in out.recent],
        ]
        have = [s.key for s in self.hot.segments]
        keep = 0
        while keep < min(len(have), len(want)) and have[keep] == want[keep][0]:
            keep += 1
        self.hot.truncate(keep)
        restored = reinjected = 0
        for key, row in want[keep:]:
            if row is None:
                self.hot.decode(key, self.close)
            elif row.key in out.needles:
                self.hot.decode(row.key, row.tokens.tolist())
                reinjected += 1
            else:
                self.restore(row)
                restored += 1
        out.restored += restored
        out.reinjected += reinjected
        return restored, reinjected

    def settle(self) -> None:
        """Bring the latest set in whole again (after a refresh was cancelled midway)."""
        if self.last is not None:
            self._bring(self.last)

    def refresh(self, tokens: list[int]) -> Refresh | None:
        """Choose the working set again during an answer (seed 003's decode-time refresh):
        the needle blocks that the keys of ``tokens`` (the question and the answer so far)
        lead to and that the context lacks come in, in place of the lowest-scored blocks
        that are not needles when the budget is spent; needles already in stay. The
        context then ends with the recent conversation again: the caller decodes the
        question and the answer so far after it. None when nothing new is wanted (the
        context is left as it was)."""
        last = self.last
        if last is None:
            return None
        t0 = time.perf_counter()
        have = {r.key for r in last.docs} | last.shadowed  # lookalikes stay out
        new, _ = self.selector.more(tokens, have)
        ms = (time.perf_counter() - t0) * 1000
        if not new:
            return None
        used = sum(r.n_tokens for r in last.docs)
        evictable = sorted(
            (r for r in last.docs if r.key not in last.needles), key=lambda r: last.scores.get(r.key, 0.0)
        )
        taken: list[BlockRow] = []
        dropped: list[BlockRow] = []
        for row in new:
            while used + row.n_tokens > last.budget and evictable:
                victim = evictable.pop(0)
                dropped.append(victim)
                used -= victim.n_tokens
            if used + row.n_tokens > last.budget:
                break
            taken.append(row)
            used += row.n_tokens
        if not taken:
            return None
        gone = {r.key for r in dropped}
        # the blocks dropped leave the context and the gap closes (a shift, as the ingest
        # window slides): what followed them, needles included, stays without being
        # decoded again; the new blocks go after the ones kept
        for i in sorted((i for i, seg in enumerate(self.hot.segments) if seg.key in gone), reverse=True):
            self.hot.drop_front(i, 1)
        last.docs = [r for r in last.docs if r.key not in gone] + sorted(taken, key=lambda r: (r.doc_id, r.idx))
        last.needles |= {r.key for r in taken}
        before = self.recomputed
        restored, reinjected = self._bring(last)
        last.recomputed += self.recomputed - before
        listed = {row.key for row, _, _ in last.sources}
        for r in taken:  # a block the question chose, dropped by a refresh and brought back is listed once
            if r.key not in listed:
                last.sources.append((r, last.scores.get(r.key, 0.0), "reinjected"))
        return Refresh(taken, dropped, restored, reinjected, ms, (time.perf_counter() - t0) * 1000)

    # -- a document's window during ingest -----------------------------------------------------
    def arrange_window(self, want: list[BlockRow]) -> None:
        """Make the context hold the sink then exactly ``want`` (the document's window)."""
        have = [s.key for s in self.hot.segments[1:]]
        keys = [r.key for r in want]
        if have == keys:
            return
        k = len(have) - len(keys)
        if k > 0 and have[k:] == keys:  # the window slid: drop the oldest and shift back
            self.hot.drop_front(1, k)
            return
        self.hot.truncate(1)
        for r in want:
            self.restore(r)

    # -- blocks in and out ----------------------------------------------------------------------
    def blob_of(self, start: int, n: int) -> bytearray:
        return self.hot.blob(start, n)

    def restore(self, row: BlockRow) -> Segment:
        eb = self.store.get(row.key)
        if eb is not None:
            try:
                return self.hot.restore(row.key, eb.to_blob(row.pos0, 1), row.pos0, row.n_tokens)
            except (LocalsymError, ValueError) as e:  # a block that reads clean but llama.cpp refuses
                log.warning("block %s could not be restored (%s): rebuilding it from its tokens", row.key[:12], e)
                self.hot.truncate(len(self.hot.segments))
                self.repaired.append(row)
        elif row.key in self.store.damaged:  # damaged, not merely evicted: the faces say so
            self.store.damaged.discard(row.key)
            self.repaired.append(row)
        eb = self.rebuild(row)
        return self.hot.restore(row.key, eb.to_blob(row.pos0, 1), row.pos0, row.n_tokens)

    def rebuild(self, row: BlockRow) -> EncodedBlock:
        """Recompute a block from its exact tokens in the context it was first computed in
        (for a document: the sink, then its own earlier blocks of the ingest window, at the
        same positions), in a sequence of its own; written to the store again."""
        ctx = self.ctx
        context: list[int] = []
        if row.kind != "turn":
            for r in reversed([r for r in self._doc_rows(row) if r.idx < row.idx]):
                if len(context) + r.n_tokens > row.pos0 - len(self.sink):
                    break
                context = r.tokens.tolist() + context
        if row.kind != "turn" and len(self.sink) + len(context) == row.pos0:
            prefix, start = self.sink + context, 0
        else:  # a turn (its conversation is gone): the sink right before it
            start = max(row.pos0 - len(self.sink), 0)
            prefix = self.sink[-(row.pos0 - start) :] if row.pos0 > start else []
        ctx.seq_rm(REBUILD)
        try:
            ctx.decode(prefix, start, REBUILD, logits="none")
            ctx.decode(row.tokens.tolist(), row.pos0, REBUILD, logits="none")
            ctx.seq_rm(REBUILD, 0, row.pos0)
            blob = ctx.state_seq_get(REBUILD)
        finally:
            ctx.seq_rm(REBUILD)
        self.recomputed += 1
        return self.store.done(self.store.seal(row.key, blob, row.pos0, self._pinned(row.tokens))).block

    def adopt(self, key: str, start: int, n: int) -> None:
        """A run already in the context (a finished turn's chunk) becomes a block segment."""
        self.hot.segments.append(Segment(key, start, n))

    # -- measuring (benchmarks) -------------------------------------------------------------------
    def measure(self, row: BlockRow, reps: int = 5) -> dict[str, float]:
        """Median ms to seal ``row`` (its blob parsed, formats chosen, every layer encoded; no
        file written) and to bring it into the context after the sink: restored from the warm
        tier (dequantize into a blob, llama.cpp loads and shifts it), from its cold file (read
        and verified too), and recomputed by prefill (the baseline)."""
        eb = self.store.get(row.key)
        if eb is None:
            eb = self.rebuild(row)

        def timed(fn: Callable[[], object]) -> float:
            ts = []
            for _ in range(reps):
                self.hot.truncate(1)
                t0 = time.perf_counter()
                fn()
                ts.append((time.perf_counter() - t0) * 1000)
            self.hot.truncate(1)
            return statistics.median(ts)

        def from_cold() -> None:
            cold, _ = self.store.cold.get(row.key)
            self.hot.restore(row.key, cold.to_blob(row.pos0, 1), row.pos0, row.n_tokens)

        self.hot.truncate(1)
        self.hot.restore(row.key, eb.to_blob(row.pos0, 1), row.pos0, row.n_tokens)
        seg = self.hot.segments[-1]
        blob = self.hot.blob(seg.start, seg.n)
        seal_ms = []
        for _ in range(reps):
            t0 = time.perf_counter()
            self.store.encode(blob, False)
            seal_ms.append((time.perf_counter() - t0) * 1000)
        return {
            "seal_ms": statistics.median(seal_ms),
            "restore_warm_ms": timed(
                lambda: self.hot.restore(row.key, eb.to_blob(row.pos0, 1), row.pos0, row.n_tokens)
            ),
            "restore_cold_ms": timed(from_cold),
            "recompute_ms": timed(lambda: self.hot.decode(row.key, row.tokens.tolist())),
            "f16_bytes": float(eb.f16_bytes),
            "block_bytes": float(eb.nbytes),
        }
