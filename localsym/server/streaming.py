"""A streamed response that always cleans up: it watches the client from the first moment
(a client that leaves stops the turn), holds back the status line until the first chunk
exists (so a turn that cannot start still gets a proper error status, and the headers can
carry what the prefill did), and calls ``on_close`` however it ends."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
from sse_starlette.event import ServerSentEvent
from starlette.types import Receive, Scope, Send

from localsym.server.errors import ApiError, error_response

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
JSON = "application/json"
log = logging.getLogger("localsym.server")


def sse(data: Any) -> bytes:
    """One ``data: {...}`` event (``[DONE]`` as it stands)."""
    return ServerSentEvent(data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))).encode()


def sse_event(event: str, data: Any) -> bytes:
    return ServerSentEvent(json.dumps(data, separators=(",", ":")), event=event).encode()


def ndjson(obj: Any) -> bytes:
    return (json.dumps(obj, separators=(",", ":")) + "\n").encode()


class Streamed:
    def __init__(
        self,
        body: AsyncIterator[bytes],
        media_type: str,
        *,
        headers: Callable[[], dict[str, str]] | None = None,
        on_close: Callable[[bool], Awaitable[None]] | None = None,
        whole: bool = False,
    ) -> None:
        """``whole``: gather the body and send it with a Content-Length (a non-streamed
        answer, still stopped if the client leaves while it is made)."""
        self.body, self.media_type, self.headers, self.on_close, self.whole = body, media_type, headers, on_close, whole
        self.client_gone = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tg:

                async def watch() -> None:
                    while True:
                        msg = await receive()
                        if msg["type"] == "http.disconnect":
                            self.client_gone = True
                            tg.cancel_scope.cancel()
                            return

                tg.start_soon(watch)
                try:
                    await self._send(scope, receive, send)
                except OSError:  # the server's send after the client left
                    self.client_gone = True
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    await self.body.aclose()  # type: ignore[attr-defined]
                finally:
                    if self.on_close is not None:
                        await self.on_close(self.client_gone)

    async def _send(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks: list[bytes] = []
        try:
            if self.whole:
                async for c in self.body:
                    chunks.append(c)
            else:
                async for c in self.body:
                    chunks.append(c)
                    break
        except ApiError as e:
            await error_response(scope.get("path", ""), e)(scope, receive, send)
            return
        except Exception:  # noqa: BLE001 - logged; the client gets a plain 500, never a traceback
            log.exception("request failed")
            await error_response(scope.get("path", ""), ApiError(500, "internal error (see the server's log)"))(
                scope, receive, send
            )
            return
        first = b"".join(chunks)
        headers = [(b"content-type", self.media_type.encode())]
        if self.whole:
            headers.append((b"content-length", str(len(first)).encode()))
        else:
            headers += [(b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no")]
        for k, v in (self.headers() if self.headers else {}).items():
            headers.append((k.lower().encode("latin-1"), str(v).encode("latin-1")))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if self.whole:
            await send({"type": "http.response.body", "body": first, "more_body": False})
            return
        await send({"type": "http.response.body", "body": first, "more_body": True})
        try:
            async for c in self.body:
                await send({"type": "http.response.body", "body": c, "more_body": True})
        except Exception:  # noqa: BLE001 - the status line is gone: end the stream, log why
            log.exception("stream failed")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
