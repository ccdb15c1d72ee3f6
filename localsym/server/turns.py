"""One turn on a leased session, run in a worker thread: its pieces come back to the event
loop through a queue, cut at the request's stop strings, and a client that leaves stops it
between two tokens (``Session.cancel``); either way the turn is finished and stored."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

from localsym.errors import LocalsymError
from localsym.server.errors import ApiError
from localsym.server.sessions import Lease, settle, sink_lost
from localsym.session import GenParams, TurnStats


class StopFilter:
    """Holds back text that may be the start of a stop string, and drops the stop string
    and all after it: OpenAI and Ollama never send the stop sequence itself."""

    def __init__(self, stops: list[str] | tuple[str, ...]) -> None:
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.hit = False

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return piece
        self.buf += piece
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buf, self.hit = self.buf[:cut], "", True
            return out
        keep = max(
            (k for s in self.stops for k in range(min(len(s) - 1, len(self.buf)), 0, -1) if self.buf.endswith(s[:k])),
            default=0,
        )
        out = self.buf[: len(self.buf) - keep]
        self.buf = self.buf[len(out) :]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.hit else self.buf), ""
        return out


def _api_error(e: BaseException) -> ApiError:
    msg = str(e)
    if "fit" in msg and "context" in msg:
        return ApiError(400, msg, "context_length_exceeded")
    return ApiError(400, msg, "invalid_request")


class TurnRun:
    def __init__(
        self,
        lease: Lease,
        question: str,
        params: GenParams,
        raw: bool,
        conversation: list[dict[str, Any]] | None = None,
        tools: list[dict[str, Any]] | None = None,
        suffix: str | None = None,
    ) -> None:
        self.lease, self.question, self.params, self.raw = lease, question, params, raw
        self.suffix = suffix
        self.conversation, self.tools = conversation, tools
        self.filter = StopFilter(list(params.stop))
        self.sent: list[str] = []  # what went to the client, after the stop filter
        self.stats: TurnStats | None = None
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._stop = threading.Event()
        self._fut: asyncio.Future[None] | None = None
        self.live: TurnStats | None = None  # the running turn's stats, filled in as it goes
        self.sink_lost = False  # the session's system prompt is decoded again by this turn (a shared context)

    def start(self) -> None:
        loop = asyncio.get_running_loop()

        def put(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed under us (shutdown)
                loop.call_soon_threadsafe(self._queue.put_nowait, (kind, value))

        def work() -> None:
            try:
                s = self.lease.session
                self.sink_lost = sink_lost(s)  # given away since the request began: rebuilt by the turn
                turn: Any = (
                    s.ask(self.question, self.params, self.raw, suffix=self.suffix)
                    if self.conversation is None
                    else s.ask_conversation(self.conversation, self.params, self.tools)
                )
            except Exception as e:  # noqa: BLE001 - handed to the event loop, which answers with it
                put("error", e)
                return
            self.live = turn.stats
            try:
                for piece in turn:
                    put("piece", piece)
                    if self._stop.is_set():
                        break
            except Exception as e:  # noqa: BLE001
                put("error", e)
            finally:
                turn.close()  # finishes the turn: KV made whole, exchange stored
                put("end", turn.stats)

        self._fut = self.lease.submit(work)

    async def pieces(self) -> AsyncIterator[str]:
        """The answer's text as it comes; raises ApiError for a turn that cannot run."""
        while True:
            kind, value = await self._queue.get()
            if kind == "error":
                if isinstance(value, LocalsymError):
                    raise _api_error(value)
                raise value
            if kind == "end":
                self.stats = value
                tail = self.filter.flush()
                if tail:
                    self.sent.append(tail)
                    yield tail
                return
            out = self.filter.feed(value)
            if out:
                self.sent.append(out)
                yield out

    @property
    def text(self) -> str:
        return "".join(self.sent)

    def stop(self) -> None:
        """Stop the answer (the client left): the worker stops pulling tokens after the
        current one and closes the turn, which stores it as far as it got.

        Not ``Session.cancel()``: its flag outlives a turn that ends on its own just as the
        client leaves (or one stopped while its working set is restored), and a flag left
        set aborts the session's next decode, e.g. the next request's history ingest."""
        self._stop.set()

    async def wait(self) -> TurnStats | None:
        """Wait for the worker to finish the turn; the stats it ended with."""
        if self._fut is not None:
            await settle(self._fut)
        while self.stats is None and not self._queue.empty():
            kind, value = self._queue.get_nowait()
            if kind == "end":
                self.stats = value
        return self.stats
