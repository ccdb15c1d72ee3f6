"""One llama.cpp context for many sessions: each session a few sequences of it.

A served model's sessions used to get a context each, and a context's KV cache is allocated
(and zero-filled) whole when it is made: four open sessions cost four KV caches. Here the
sessions of one model (same weights, same cache types) share one context with a unified KV
cache (``kv_unified``) of ``parallel`` x ``n_ctx`` cells, and each session sees it through a
``ContextView``: the same calls as a ``Context`` (decode, sequences, state blobs, cancel),
its sequence ids shifted into a slot of its own, and ``n_ctx`` tokens of room. At most
``parallel`` sessions are *resident* (their working set in the cache) at once; opening or
asking in another one evicts the least recently used session that is not held (its
sequences are removed; it rebuilds its working set from the block store when next used,
which its owner is told through ``on_evicted``). Memory is then ``parallel`` working sets,
however many sessions are open: llama.cpp's server does the same with ``--parallel`` slots.

Every llama.cpp call on the shared context runs under one lock, and a decode and the sample
that reads its logits are one step (``decode_sample``), so two sessions' threads interleave
call by call and never see each other's logits. With ``parallel`` > 1 the decoding steps
are batched (continuous batching): a session's next token waits in ``step`` for the other
sessions in a decode loop to bring theirs (a few ms at most), then one ``llama_decode`` runs
every waiting row, one per sequence, and each row is sampled by its own session's sampler
(grammar and all); a session joins the next batch when its prefill is done and leaves when
its answer ends. A prompt decoded meanwhile goes in pieces, and each piece carries the steps
waiting at that moment as rows of its own decode (``prefill``): the others' tokens do not
wait behind it. A caller that needs several calls in a row
without another session evicting it (a request: arrange the working set, then generate)
holds its view (``hold()``); a call made without a hold takes a slot for that call only.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from localsym.errors import LocalsymError
from localsym.runtime.bridge import Cancelled, Context, Model, Sampler


@dataclass
class _Step:
    """One session's next token, waiting to be decoded in the next batch."""

    view: ContextView
    seq: int  # the shared context's sequence id
    token: int
    pos: int
    sampler: Sampler
    out: int = -1
    error: BaseException | None = None
    done: bool = False


PREFILL_CHUNK = 128  # tokens of a prompt decoded at a time while other sessions are decoding
GATHER_S = 0.004  # how long a batch waits at most for the other decoding sessions' tokens


class ContextPool:
    """The shared context of one model and its slots."""

    _pools: dict[tuple, ContextPool] = {}
    _pools_lock = threading.Lock()

    def __init__(self, model: Model, n_ctx: int, parallel: int, n_seq: int, **ctx_kwargs: Any) -> None:
        if parallel < 1:
            raise LocalsymError("--parallel must be 1 or more")
        self.n_ctx, self.parallel, self.n_seq = n_ctx, parallel, n_seq
        self.ctx = Context(model, n_ctx * parallel, n_seq_max=n_seq * parallel, kv_unified=True, **ctx_kwargs)
        self.ctx.abort_also = self._running_cancelled
        self.lock = threading.RLock()  # one llama.cpp call at a time on the context
        self._slots = threading.Condition(threading.Lock())
        self.resident: list[ContextView | None] = [None] * parallel
        self._running: ContextView | None = None  # whose call is in llama.cpp now
        self.users = 0
        self.evictions = 0
        self._key: tuple | None = None
        # continuous batching: sessions' next tokens wait here; whoever gets the lock next
        # decodes all of them in one batch (rows of different sequences) and samples each
        self._steps: list[_Step] = []
        self._steps_lock = threading.Condition(threading.Lock())
        # views in a decode loop now (``generating``), and how many loops each: a batch waits
        # for the step of each one that was in the last batch or joined since (``_round``); one
        # that let a batch go without its step (its caller busy elsewhere, or a loop left
        # suspended and never closed) is waited for again only once its next step comes
        self._generating: dict[ContextView, int] = {}
        self._round = 0  # batches run (or failed): a view's ``_seen`` is the round it was last expected in
        self.batches = 0  # batched decodes run, and the rows they held (for bench serve)
        self.batched_rows = 0

    @classmethod
    def shared(cls, model: Model, n_ctx: int, parallel: int, n_seq: int, **ctx_kwargs: Any) -> ContextPool:
        """The pool for these weights and settings in this process (made on first use)."""
        key = (model.address, n_ctx, parallel, n_seq, tuple(sorted(ctx_kwargs.items())))
        with cls._pools_lock:
            pool = cls._pools.get(key)
            if pool is None:  # a pool whose last user left is no longer listed
                pool = cls._pools[key] = cls(model, n_ctx, parallel, n_seq, **ctx_kwargs)
                pool._key = key
            pool.users += 1
            return pool

    def view(self) -> ContextView:
        return ContextView(self)

    def _release_user(self) -> None:
        with ContextPool._pools_lock:
            self.users -= 1
            if self.users > 0:
                return
            if self._key is not None and ContextPool._pools.get(self._key) is self:
                del ContextPool._pools[self._key]
        with self.lock:  # never under a llama.cpp call still running
            self.ctx.close()

    @property
    def decoding(self) -> int:
        """Sessions in a decode loop now."""
        return len(self._generating)

    def _awaited(self) -> int:
        """(holding the steps' lock) How many views a batch waits for now."""
        return sum(1 for v in self._generating if v._seen == self._round)

    def step(self, view: ContextView, seq: int, token: int, pos: int, sampler: Sampler) -> int:
        """Decode one token of sequence ``seq`` and sample the next, in one batch with the
        other sessions' tokens that are waiting at the same time (no waiting added: a
        session's token joins the batch that starts after it arrives)."""
        mine = _Step(view, seq, token, pos, sampler)
        with self._steps_lock:
            self._steps.append(mine)
            self._steps_lock.notify_all()
            # the batch fills while every session in a decode loop brings its token (they come
            # a few ms apart: each samples, detokenizes and checks its stop strings first)
            end = time.monotonic() + GATHER_S
            while not mine.done and len(self._steps) < self._awaited():
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._steps_lock.wait(left)
        if not mine.done:  # else another thread ran it: no wait for the lock (a prefill may hold it)
            with self.lock:
                if not mine.done:
                    with self._steps_lock:
                        batch, self._steps = self._steps, []
                    self._run(batch)
        if not mine.done:  # taken from the list by a batch that failed before it ran
            raise LocalsymError("a decoding step was lost by a failed batch")
        if mine.error is not None:
            raise mine.error
        return mine.out

    def _run(self, batch: list[_Step]) -> None:
        """(holding the lock) One decode for every waiting step, then each step's sample
        (in ``n_batch`` pieces: only the last piece's logits survive a decode)."""
        try:
            for at in range(0, len(batch), self.ctx.n_batch):
                rows = self._open(batch[at : at + self.ctx.n_batch])
                if rows:
                    self._decode_rows(rows)
        finally:
            self._finish(batch)

    def prefill(self, seq: int, tokens: Sequence[int], pos: int, sampler: Sampler | None) -> int:
        """(inside a view's call: holding the lock) Decode a prompt piece of sequence ``seq``
        with the decoding steps waiting now as rows of the same batch, as llama.cpp's server
        mixes prompt chunks and decoding rows: the other sessions' next tokens come with the
        piece instead of after it, and one decode serves both. Returns the token sampled
        after the piece's last one when ``sampler`` is given, else -1."""
        running = self._running
        if self._running_cancelled():  # a mixed piece is never aborted: stop before it
            raise Cancelled()
        batch: list[_Step] = []
        try:
            with self._steps_lock:
                batch, self._steps = self._steps, []
            n = len(tokens)
            if batch and (n == 0 or n + len(batch) > self.ctx.n_ubatch):
                # the steps alone first (one ubatch at most: a failure leaves no half in the
                # cache), never aborted by this session's cancel
                self._running = None
                try:
                    self._run(batch)
                finally:
                    self._running = running
                batch = []
            if not batch:
                self.ctx.decode(tokens, pos, seq, "none" if sampler is None else "last")
                return -1 if sampler is None else sampler.sample(self.ctx)
            rows = self._open(batch)
            # a cancel of this piece's session must not abort the others' rows: it stops
            # that session at its next piece or step instead
            self._running = None
            try:
                self.ctx.decode(
                    [*tokens, *(b.token for b in rows)],
                    [*range(pos, pos + n), *(b.pos for b in rows)],
                    [seq] * n + [b.seq for b in rows],
                    [False] * (n - 1) + [sampler is not None] + [True] * len(rows),
                )
            except BaseException:
                if rows:  # theirs alone: the failure is this piece's session's
                    self._decode_rows(rows)
                raise
            finally:
                self._running = running
            self._sampled(rows, n)
            if self._running_cancelled():  # cancelled during the piece: no token out
                raise Cancelled()
            return -1 if sampler is None else sampler.sample(self.ctx, n - 1)
        finally:
            if batch:
                self._finish(batch)

    def _open(self, rows: list[_Step]) -> list[_Step]:
        """The steps of views still open; a closed one's (another thread closed it: its slot
        may be another's by now) fails."""
        for b in rows:
            if b.view._closed:
                b.error = LocalsymError("the session's context is closed")
        return [b for b in rows if not b.view._closed]

    def _decode_rows(self, rows: list[_Step]) -> None:
        """(holding the lock) One decode of ``rows`` (n_batch at most), each then sampled."""
        try:
            self.ctx.decode([b.token for b in rows], [b.pos for b in rows], [b.seq for b in rows], [True] * len(rows))
        except BaseException as e:
            for b in rows:
                b.error = e
            return
        self._sampled(rows, 0)

    def _sampled(self, rows: list[_Step], first: int) -> None:
        """Sample each row from its output of the last decode (outputs ``first`` on)."""
        self.batches += 1
        self.batched_rows += len(rows)
        for i, b in enumerate(rows):
            try:
                b.out = b.sampler.sample(self.ctx, first + i)
            except BaseException as e:  # one step's sampler fails (a grammar): the others go on
                b.error = e

    def _finish(self, batch: list[_Step]) -> None:
        """The steps of ``batch`` are done (run or failed): their threads go on."""
        with self._steps_lock:
            self._round += 1
            for b in batch:
                b.view._seen = self._round
                b.done = True
            self._steps_lock.notify_all()

    @contextmanager
    def generating(self, view: ContextView) -> Iterator[None]:
        """A session's decode loop runs: batches wait (a little) for its tokens."""
        with self._steps_lock:
            self._generating[view] = self._generating.get(view, 0) + 1
            view._seen = self._round
        try:
            yield
        finally:
            with self._steps_lock:
                n = self._generating.pop(view, 1) - 1
                if n > 0:
                    self._generating[view] = n
                self._steps_lock.notify_all()

    def _running_cancelled(self) -> bool:
        v = self._running
        return v is not None and v._cancel.is_set()

    # -- slots --------------------------------------------------------------------------
    def _acquire(self, view: ContextView, me: int) -> None:
        """Make ``view`` resident and held (by thread ``me``)."""
        with self._slots:
            while True:
                if view._closed:
                    raise LocalsymError("the session's context is closed")
                if view.slot is not None:
                    view._owners[me] = view._owners.get(me, 0) + 1
                    view.used = time.monotonic()
                    return
                free = next((i for i, v in enumerate(self.resident) if v is None), None)
                if free is None:
                    idle = [v for v in self.resident if v is not None and v.holds == 0]
                    if idle:
                        victim = min(idle, key=lambda v: v.used)
                        free = victim.slot
                        assert free is not None
                        self._evict(victim)
                if free is not None:
                    self.resident[free] = view
                    view.slot = free
                    view._owners = {me: 1}
                    view.used = time.monotonic()
                    return
                if all(set(v._owners) <= {me} for v in self.resident if v is not None):
                    # the views holding every slot are this thread's: waiting would never end
                    raise LocalsymError(
                        f"all {self.parallel} slots of the shared context are held by this thread "
                        "(e.g. answers of other sessions left unfinished): finish or close them first"
                    )
                self._slots.wait()  # every resident session is in a request: wait for one to end

    def _evict(self, victim: ContextView) -> None:
        assert victim.slot is not None
        with self.lock:
            for s in range(self.n_seq):
                self.ctx.seq_rm(victim.slot * self.n_seq + s)
        self.resident[victim.slot] = None
        victim.slot = None
        victim.evicted = True
        self.evictions += 1

    def _unhold(self, view: ContextView, me: int) -> None:
        with self._slots:
            n = view._owners.pop(me, 0) - 1
            if n > 0:
                view._owners[me] = n
            view.used = time.monotonic()
            self._slots.notify_all()

    def _drop(self, view: ContextView) -> None:
        """Give a closed view's slot back, even while another thread holds it: a call of
        theirs running in llama.cpp ends first (the eviction takes the lock), and their next
        one raises (``_closed`` is checked under the lock, a queued step too). Waiting for
        them instead could wait forever (a hold left in a generator nobody closes)."""
        with self._slots:
            if view.slot is not None:
                self._evict(view)
                self.evictions -= 1  # closed, not evicted
            self._slots.notify_all()


class ContextView:
    """A session's part of a shared context, with a ``Context``'s calls."""

    def __init__(self, pool: ContextPool) -> None:
        self.pool = pool
        ctx = pool.ctx
        self.model = ctx.model
        self.n_ctx = pool.n_ctx
        self.n_batch = ctx.n_batch
        self.n_seq_max = pool.n_seq
        self.type_k, self.type_v, self.flash_attn = ctx.type_k, ctx.type_v, ctx.flash_attn
        self.n_threads = ctx.n_threads
        self.embeddings_out = False
        self.slot: int | None = None
        self._owners: dict[int, int] = {}  # holds by thread: a thread never waits for itself
        self._seen = 0  # the batching round this view's decode loop was last expected in (ContextPool.step)
        self.used = 0.0
        self.evicted = False  # lost its working set since its owner last looked
        # called (holding the view) when it comes back after an eviction: the owner rebuilds
        # what it keeps in the context (the working set's sink)
        self.on_evicted: Callable[[], None] | None = None
        self._cancel = threading.Event()
        self._closed = False

    # -- holding ------------------------------------------------------------------------
    @property
    def holds(self) -> int:
        """Holds on this view now, all threads together (0: it may be evicted)."""
        return sum(self._owners.values())

    @contextmanager
    def hold(self) -> Iterator[ContextView]:
        """Keep this view resident (not evicted by another session) while the block runs."""
        me = threading.get_ident()
        self.pool._acquire(self, me)
        try:
            if self.evicted:
                # its owner rebuilds what it keeps here; should that fail (a cancel), the next
                # hold tries again rather than run on a working set that is not there
                self.evicted = False
                try:
                    if self.on_evicted is not None:
                        self.on_evicted()
                except BaseException:
                    self.evicted = True
                    raise
            yield self
        finally:
            self.pool._unhold(self, me)

    def _seq(self, seq: int) -> int:
        if not 0 <= seq < self.pool.n_seq:
            raise LocalsymError(f"sequence {seq} is outside this session's {self.pool.n_seq}")
        slot = self.slot
        if slot is None:  # only a close takes the slot of a view that is held
            raise LocalsymError("the session's context is closed")
        return slot * self.pool.n_seq + seq

    @contextmanager
    def _call(self) -> Iterator[None]:
        with self.hold(), self.pool.lock:
            if self._closed:  # closed by another thread while this one waited for the lock
                raise LocalsymError("the session's context is closed")
            self.pool._running = self
            try:
                yield
            finally:
                self.pool._running = None

    # -- what a Context offers ------------------------------------------------------------
    @property
    def _ptr(self) -> Any:  # Sampler reads logits through it, inside decode_sample's lock
        return self.pool.ctx._ptr

    def close(self) -> None:
        """Give the slot back; a call another thread is making on this view is stopped
        (a decode running now aborts, the next call raises)."""
        if self._closed:
            return
        self._closed = True
        self._cancel.set()  # a decode of this view running now stops at its next graph split
        self.pool._drop(self)
        self.pool._release_user()

    def cancel(self) -> None:
        self._cancel.set()

    def clear_cancel(self) -> None:
        self._cancel.clear()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int] | int,
        seq_ids: Sequence[int] | int = 0,
        logits: str | Sequence[bool] = "last",
    ) -> None:
        if logits == "none" and isinstance(positions, int) and isinstance(seq_ids, int):
            n, c = len(tokens), self._chunk(len(tokens))
            for a in range(0, n, c):  # others' decoding steps ride along with the pieces
                with self._call():
                    self.pool.prefill(self._seq(seq_ids), tokens[a : a + c], positions + a, None)
            return
        with self._call():
            self.pool.ctx.decode(tokens, positions, self._map(seq_ids, len(tokens)), logits)

    def _chunk(self, n: int) -> int:
        """How much of a long prompt to decode in one call: all of it, unless other sessions
        are in a decode loop (then PREFILL_CHUNK tokens, each piece with their waiting steps
        as rows of its batch: llama.cpp's server mixes prompt chunks and decoding rows alike)."""
        return PREFILL_CHUNK if self.pool.parallel > 1 and self.pool.decoding > 0 else max(n, 1)

    def _map(self, seq_ids: Sequence[int] | int, n: int) -> Any:
        if isinstance(seq_ids, int):
            return self._seq(seq_ids)
        return [self._seq(s) if isinstance(s, int) else [self._seq(x) for x in s] for s in seq_ids]

    def generating(self) -> contextlib.AbstractContextManager[None]:
        return self.pool.generating(self) if self.pool.parallel > 1 else contextlib.nullcontext()

    def decode_sample(self, tokens: Sequence[int], positions: Sequence[int] | int, seq: int, sampler: Sampler) -> int:
        if len(tokens) == 1 and self.pool.parallel > 1:  # a decoding step: batched with the others'
            pos = positions if isinstance(positions, int) else positions[0]
            with self.hold():
                if self._cancel.is_set():
                    raise Cancelled()
                return self.pool.step(self, self._seq(seq), tokens[0], pos, sampler)
        c = self._chunk(len(tokens))
        if isinstance(positions, int) and len(tokens) > c:
            head = (len(tokens) - 1) // c * c  # the last piece (1 to c tokens) is decoded with the sample
            self.decode(tokens[:head], positions, seq, "none")  # in pieces, others' steps along
            tokens, positions = tokens[head:], positions + head
        with self._call():
            if isinstance(positions, int):
                return self.pool.prefill(self._seq(seq), tokens, positions, sampler)
            self.pool.ctx.decode(tokens, positions, self._seq(seq))
            return sampler.sample(self.pool.ctx)

    def logits(self, i: int = -1) -> np.ndarray:
        raise LocalsymError("a shared context's logits are read in decode_sample")

    def logits_all(self, n: int) -> np.ndarray:
        raise LocalsymError("a shared context's logits are read in decode_sample")

    def clear(self) -> None:
        with self._call():
            for s in range(self.pool.n_seq):
                self.pool.ctx.seq_rm(self._seq(s))

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        with self._call():
            return self.pool.ctx.seq_rm(self._seq(seq), p0, p1)

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        with self._call():
            self.pool.ctx.seq_cp(self._seq(src), self._seq(dst), p0, p1)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        with self._call():
            self.pool.ctx.seq_add(self._seq(seq), p0, p1, delta)

    def seq_pos_min(self, seq: int) -> int:
        with self._call():
            return self.pool.ctx.seq_pos_min(self._seq(seq))

    def seq_pos_max(self, seq: int) -> int:
        with self._call():
            return self.pool.ctx.seq_pos_max(self._seq(seq))

    def state_seq_get(self, seq: int, flags: int = 0) -> bytearray:
        with self._call():
            return self.pool.ctx.state_seq_get(self._seq(seq), flags)

    def state_seq_set(self, seq: int, blob: bytes | bytearray | np.ndarray, flags: int = 0) -> int:
        with self._call():
            return self.pool.ctx.state_seq_set(self._seq(seq), blob, flags)


AnyContext = Context | ContextView  # what a session's engine decodes in: its own context or its part of one
