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
its answer ends. A caller that needs several calls in a row
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

    seq: int  # the shared context's sequence id
    token: int
    pos: int
    sampler: Sampler
    out: int = -1
    error: BaseException | None = None
    done: bool = False


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
        self.decoding = 0  # sessions in a decode loop now (``generating``): a batch waits for theirs
        self.batches = 0  # batched decodes run, and the rows they held (for bench serve)
        self.batched_rows = 0

    @classmethod
    def shared(cls, model: Model, n_ctx: int, parallel: int, n_seq: int, **ctx_kwargs: Any) -> ContextPool:
        """The pool for these weights and settings in this process (made on first use)."""
        key = (model.address, n_ctx, parallel, n_seq, tuple(sorted(ctx_kwargs.items())))
        with cls._pools_lock:
            pool = cls._pools.get(key)
            if pool is None or pool.ctx is None:
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
        self.ctx.close()

    def step(self, seq: int, token: int, pos: int, sampler: Sampler) -> int:
        """Decode one token of sequence ``seq`` and sample the next, in one batch with the
        other sessions' tokens that are waiting at the same time (no waiting added: a
        session's token joins the batch that starts after it arrives)."""
        mine = _Step(seq, token, pos, sampler)
        with self._steps_lock:
            self._steps.append(mine)
            self._steps_lock.notify_all()
            # the batch fills while every session in a decode loop brings its token (they come
            # a few ms apart: each samples, detokenizes and checks its stop strings first)
            end = time.monotonic() + GATHER_S
            while not mine.done and len(self._steps) < self.decoding:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._steps_lock.wait(left)
        with self.lock:
            if not mine.done:
                with self._steps_lock:
                    batch, self._steps = self._steps, []
                self._run(batch)
        if mine.error is not None:
            raise mine.error
        return mine.out

    def _run(self, batch: list[_Step]) -> None:
        """(holding the lock) One decode for every waiting step, then each step's sample."""
        try:
            self.ctx.decode(
                [b.token for b in batch], [b.pos for b in batch], [b.seq for b in batch], [True] * len(batch)
            )
            self.batches += 1
            self.batched_rows += len(batch)
            for i, b in enumerate(batch):
                try:
                    b.out = b.sampler.sample(self.ctx, i)
                except BaseException as e:  # one step's sampler fails: the others go on
                    b.error = e
        except BaseException as e:
            for b in batch:
                b.error = b.error or e
        finally:
            for b in batch:
                b.done = True
            with self._steps_lock:
                self._steps_lock.notify_all()

    @contextmanager
    def generating(self) -> Iterator[None]:
        """A session's decode loop runs: batches wait (a little) for its tokens."""
        with self._steps_lock:
            self.decoding += 1
        try:
            yield
        finally:
            with self._steps_lock:
                self.decoding -= 1
                self._steps_lock.notify_all()

    def _running_cancelled(self) -> bool:
        v = self._running
        return v is not None and v._cancel.is_set()

    # -- slots --------------------------------------------------------------------------
    def _acquire(self, view: ContextView) -> bool:
        """Make ``view`` resident and held; True when it had to be brought in (evicted or new)."""
        with self._slots:
            while True:
                if view.slot is not None:
                    view.holds += 1
                    view.used = time.monotonic()
                    return False
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
                    view.holds = 1
                    view.used = time.monotonic()
                    return True
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

    def _unhold(self, view: ContextView) -> None:
        with self._slots:
            view.holds = max(0, view.holds - 1)
            view.used = time.monotonic()
            self._slots.notify_all()

    def _drop(self, view: ContextView) -> None:
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
        self.holds = 0
        self.used = 0.0
        self.evicted = False  # lost its working set since its owner last looked
        # called (holding the view) when it comes back after an eviction: the owner rebuilds
        # what it keeps in the context (the working set's sink)
        self.on_evicted: Callable[[], None] | None = None
        self._cancel = threading.Event()
        self._closed = False

    # -- holding ------------------------------------------------------------------------
    @contextmanager
    def hold(self) -> Iterator[ContextView]:
        """Keep this view resident (not evicted by another session) while the block runs."""
        if self._closed:
            raise LocalsymError("the session's context is closed")
        brought = self.pool._acquire(self)
        try:
            if brought and self.evicted:
                self.evicted = False
                if self.on_evicted is not None:
                    self.on_evicted()
            yield self
        finally:
            self.pool._unhold(self)

    def _seq(self, seq: int) -> int:
        if not 0 <= seq < self.pool.n_seq:
            raise LocalsymError(f"sequence {seq} is outside this session's {self.pool.n_seq}")
        assert self.slot is not None
        return self.slot * self.pool.n_seq + seq

    @contextmanager
    def _call(self) -> Iterator[None]:
        with self.hold(), self.pool.lock:
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
        if self._closed:
            return
        self._closed = True
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
        with self._call():
            self.pool.ctx.decode(tokens, positions, self._map(seq_ids, len(tokens)), logits)

    def _map(self, seq_ids: Sequence[int] | int, n: int) -> Any:
        if isinstance(seq_ids, int):
            return self._seq(seq_ids)
        return [self._seq(s) if isinstance(s, int) else [self._seq(x) for x in s] for s in seq_ids]

    def generating(self) -> contextlib.AbstractContextManager[None]:
        return self.pool.generating() if self.pool.parallel > 1 else contextlib.nullcontext()

    def decode_sample(self, tokens: Sequence[int], positions: Sequence[int] | int, seq: int, sampler: Sampler) -> int:
        if len(tokens) == 1 and self.pool.parallel > 1:  # a decoding step: batched with the others'
            pos = positions if isinstance(positions, int) else positions[0]
            with self.hold():
                if self._cancel.is_set():
                    raise Cancelled()
                return self.pool.step(self._seq(seq), tokens[0], pos, sampler)
        with self._call():
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
