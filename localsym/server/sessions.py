"""The open sessions: at most ``max_sessions`` at once. They share one copy of the weights
(``Model.shared``) and, with ``--parallel N`` (the default, N=1), one llama.cpp context that
holds N sessions' working sets (runtime/context_pool.py: another session evicts the least
recently used idle one); with ``--parallel 0`` each owns a context. The least recently used
idle session is closed to make room. A session serves one request at a time: the others
wait in a FIFO queue of bounded length, and past it get a 503 with Retry-After.

llama.cpp calls block (they release the GIL), so everything a session does runs in the
pool's worker threads, never on the event loop; a request holds its session's lease from
the first call to the last and releases it only once the worker is done with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio

from localsym.errors import LocalsymError
from localsym.server.errors import ApiError, ClientGone
from localsym.server.ledger import Ledger
from localsym.server.settings import ServerSettings
from localsym.session import Session, SessionBusy, delete_session, session_dir

T = TypeVar("T")
Gone = Callable[[], Awaitable[bool]]
POLL_S = 0.2  # how often a waiting request checks that its client is still there
RETRY_AFTER = "5"


@dataclass
class Entry:
    """One session name in the pool: open or not, and who holds or waits for it."""

    name: str
    ephemeral: bool = False
    session: Session | None = None
    ledger: Ledger | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    waiting: int = 0
    admitted: int = 0  # requests holding or waiting for the session, from admission to release
    last_used: float = 0.0
    opened_at: float = 0.0
    hot_capacity: int = 0

    def version(self) -> str | None:
        """What an attached chat compares to see whether the session's messages changed: the
        open session (a replaced history opens a new one) and the exchanges it stored."""
        s = self.session
        return None if s is None else f"{self.opened_at:.6f}/{s.exchanges}"


async def settle(fut: asyncio.Future[T]) -> T:
    """Await a worker's result; if the caller is cancelled meanwhile, still wait for the
    worker to finish (the session is not free before), then let the cancellation through."""
    try:
        return await asyncio.shield(fut)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await asyncio.wait({fut})
        raise


def sink_lost(session: Session | None) -> bool:
    """Whether the session's place in a shared context was given away since it last ran: its
    system prompt is decoded again when it comes back (runtime/context_pool.ContextView)."""
    return bool(getattr(getattr(getattr(session, "engine", None), "ctx", None), "evicted", False))


class Lease:
    """A request's exclusive use of one open session."""

    def __init__(self, pool: SessionPool, entry: Entry, waited_s: float) -> None:
        self.pool, self.entry, self.waited_s = pool, entry, waited_s
        self.released = False

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def session(self) -> Session:
        assert self.entry.session is not None
        return self.entry.session

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        return asyncio.get_running_loop().run_in_executor(self.pool.executor, fn, *args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        return await settle(self.submit(fn, *args))

    def close_session(self) -> None:
        """(worker thread) Close the session, keeping the lease: ``open_session`` follows."""
        e = self.entry
        if e.session is not None:
            session, e.session, e.ledger = e.session, None, None
            session.close()

    def open_session(self, overrides: dict | None = None) -> Session:
        """(worker thread) Open the leased name again (after ``close_session``), e.g. with a new system prompt."""
        e, st = self.entry, self.pool.settings
        e.session = Session.open(e.name, st.model, st.opts, overrides=overrides)
        e.opened_at = time.time()
        return e.session

    async def release(self) -> None:
        """Give the session back (an ephemeral one is closed and deleted). Safe to call twice."""
        if self.released:
            return
        self.released = True
        with anyio.CancelScope(shield=True):
            e = self.entry
            if e.ephemeral and e.session is not None and not self.pool.closing:  # else close_all does it
                await settle(self.submit(_close_and_delete, e.session, e.name))
                e.session = None
            e.last_used = time.monotonic()
            e.lock.release()
            e.admitted -= 1
            await self.pool.idle(e)


def _close_and_delete(session: Session, name: str) -> None:
    try:
        session.close()
    finally:
        with contextlib.suppress(LocalsymError, OSError):
            delete_session(name)


class SessionPool:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.entries: dict[str, Entry] = {}
        self.opening = 0  # sessions being opened: they hold a slot already
        self.slot_waiters = 0
        self.executor = ThreadPoolExecutor(max_workers=settings.max_sessions + 4, thread_name_prefix="localsym-serve")
        self.closing = False  # shutting down: the workers take no new work
        self._cond: asyncio.Condition | None = None

    @property
    def n_open(self) -> int:
        return self.opening + sum(1 for e in self.entries.values() if e.session is not None)

    @property
    def cond(self) -> asyncio.Condition:
        if self._cond is None:
            self._cond = asyncio.Condition()
        return self._cond

    def busy(self, what: str) -> ApiError:
        return ApiError(
            503,
            f"{what}: too many requests waiting, try again shortly",
            "queue_full",
            headers={"Retry-After": RETRY_AFTER},
        )

    # -- taking and giving back -------------------------------------------------------------------
    async def acquire(self, name: str | None, system: str | None, gone: Gone) -> Lease:
        """The session ``name`` (None: a new ephemeral one), opened if need be, once every
        request before this one on it is done. Raises ApiError (503 queue full, 409 busy in
        another process, 400 bad name) or ClientGone."""
        t0 = time.monotonic()
        ephemeral = name is None
        if name is None:
            name = f"ephemeral-{uuid.uuid4().hex[:16]}"
        try:
            session_dir(name)
        except LocalsymError as e:
            raise ApiError(400, str(e), "bad_session_name") from None
        entry = self.entries.get(name)
        if entry is None:
            entry = self.entries[name] = Entry(name, ephemeral)
        # one request runs and ``queue`` wait, counted from admission to release: the lock's
        # state misses a request granted the lock but not yet resumed (a burst refused one
        # too many) and counts an eviction's brief hold as a request
        if entry.admitted > self.settings.queue:
            raise self.busy(f"session {name!r} is busy")
        entry.admitted += 1
        entry.waiting += 1
        try:
            await _lock(entry.lock, gone)
        except BaseException:
            entry.waiting -= 1
            entry.admitted -= 1
            with anyio.CancelScope(shield=True):
                await self.idle(entry)
            raise
        entry.waiting -= 1
        try:
            if entry.session is None:
                await self._open(entry, system, gone)
        except BaseException:
            entry.lock.release()
            entry.admitted -= 1
            with anyio.CancelScope(shield=True):
                await self.idle(entry)
            raise
        entry.last_used = time.monotonic()
        return Lease(self, entry, time.monotonic() - t0)

    async def idle(self, e: Entry) -> None:
        """A session was given back: forget a closed, unwanted entry; wake slot waiters."""
        if e.session is None and not e.lock.locked() and not e.waiting and self.entries.get(e.name) is e:
            del self.entries[e.name]
        async with self.cond:
            self.cond.notify_all()

    async def _open(self, e: Entry, system: str | None, gone: Gone) -> None:
        async with self.cond:
            while self.n_open >= self.settings.max_sessions:
                victim = self._least_recent_idle(e)
                if victim is not None:
                    await self._close(victim)
                    continue
                if self.slot_waiters >= self.settings.queue:
                    raise self.busy(f"all {self.settings.max_sessions} sessions are in use")
                self.slot_waiters += 1
                try:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.cond.wait(), POLL_S)
                    if await gone():
                        raise ClientGone()
                finally:
                    self.slot_waiters -= 1
            self.opening += 1
        overrides = {"system": system} if system is not None else None
        s = self.settings
        try:
            fut = asyncio.get_running_loop().run_in_executor(
                self.executor, lambda: Session.open(e.name, s.model, s.opts, overrides=overrides)
            )
            e.session = await settle(fut)
        except BaseException as exc:
            if isinstance(exc, SessionBusy):
                raise ApiError(409, str(exc), "session_busy") from None
            if isinstance(exc, LocalsymError):
                raise ApiError(400, str(exc), "session_error") from None
            raise
        finally:
            self.opening -= 1
        e.opened_at = time.time()
        e.ledger = None
        e.hot_capacity = 0

    def _least_recent_idle(self, exclude: Entry | None) -> Entry | None:
        idle = [
            x
            for x in self.entries.values()
            if x is not exclude and x.session is not None and not x.lock.locked() and not x.waiting and not x.ephemeral
        ]
        return min(idle, key=lambda x: x.last_used) if idle else None

    async def _close(self, e: Entry) -> None:
        await e.lock.acquire()  # free: it was idle, and nothing ran since (no await between)
        try:
            session, e.session, e.ledger = e.session, None, None
            if session is not None:
                await settle(asyncio.get_running_loop().run_in_executor(self.executor, session.close))
        finally:
            e.lock.release()
        if not e.waiting and self.entries.get(e.name) is e:
            del self.entries[e.name]

    async def close_idle(self) -> int:
        """Ollama's ``keep_alive: 0``: close every open session no request holds or waits
        for (their contexts are freed; each session stays on disk and opens again on its next
        request). Returns how many were closed."""
        n = 0
        async with self.cond:  # as _open closes its victims: one closer at a time
            while (victim := self._least_recent_idle(None)) is not None:
                await self._close(victim)
                if not victim.lock.locked() and not victim.waiting and self.entries.get(victim.name) is victim:
                    del self.entries[victim.name]
                n += 1
            self.cond.notify_all()
        return n

    # -- reading and shutting down ----------------------------------------------------------------
    def open_sessions(self) -> list[Entry]:
        return [e for e in self.entries.values() if e.session is not None]

    def stop_answers(self) -> None:
        """(any thread, a signal handler) Stop every answer running now."""
        for e in list(self.entries.values()):
            s = e.session
            if s is not None:
                s.cancel()

    async def close_all(self) -> None:
        """At shutdown: stop the answers still running (each stores itself, as stopped), let
        the workers finish, then close every session, so nothing sealed is left in flight."""
        self.closing = True
        self.stop_answers()
        await asyncio.get_running_loop().run_in_executor(None, self.executor.shutdown, True)
        for e in list(self.entries.values()):
            session, e.session = e.session, None
            if session is not None:
                session.close()
                if e.ephemeral:
                    with contextlib.suppress(LocalsymError, OSError):
                        delete_session(e.name)


async def _lock(lock: asyncio.Lock, gone: Gone) -> None:
    """Take ``lock`` in FIFO order, giving up if the client leaves meanwhile."""
    task = asyncio.ensure_future(lock.acquire())
    try:
        while not task.done():
            await asyncio.wait({task}, timeout=POLL_S)
            if not task.done() and await gone():
                raise ClientGone()
    except BaseException:
        task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            lock.release()  # it was granted just as we gave up
        raise
