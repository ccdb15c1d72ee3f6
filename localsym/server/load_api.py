"""localsym's own endpoints: load files into a session (progress as SSE), and read, list or
delete sessions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localsym.errors import LocalsymError
from localsym.server.errors import ApiError, ClientGone, error_body
from localsym.server.inputs import SESSION_HEADER, read_json
from localsym.server.ledger import Ledger
from localsym.server.roots import allowed_path
from localsym.server.sessions import Lease
from localsym.server.state import ServerState
from localsym.server.streaming import JSON, SSE, Streamed, sse_event
from localsym.session import LoadReport, delete_session, list_sessions, session_dir, session_exists

PROGRESS_EVERY_S = 0.2


def _report(rep: LoadReport, lease: Lease) -> dict[str, Any]:
    return {
        "session": lease.name,
        "files": rep.files,
        "tokens": rep.tokens,
        "blocks": rep.blocks,
        "computed_blocks": rep.computed_blocks,
        "reused_blocks": rep.reused_blocks,
        "seconds": round(rep.seconds, 3),
        "skipped": [{"path": p, "reason": r} for p, r in rep.skipped],
        "session_tokens": lease.session.total_tokens,
    }


async def load(request: Request) -> Response:
    """``{"path", "session"}`` (or the session header); ``"stream": false`` for one JSON
    object instead of SSE progress events. A client that leaves does not stop the load:
    what it acknowledged is kept, and the next load of the same tree reuses it."""
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    real = allowed_path(body.get("path"), st.settings.allow_roots)
    name = body.get("session") or request.headers.get(SESSION_HEADER)
    if not isinstance(name, str) or not name:
        raise ApiError(
            400, 'name the session to load into ("session" or the X-Localsym-Session header)', param="session"
        )
    stream = body.get("stream", True) is not False
    try:
        lease = await st.pool.acquire(name, None, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    last = [0.0]

    def progress(done: int, total: int, source: str) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_EVERY_S:
            last[0] = now
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(
                    events.put_nowait, ("progress", {"done": done, "total": total, "source": source})
                )

    def work() -> dict[str, Any]:
        s, e = lease.session, lease.entry
        rep = s.load(real, progress)
        if e.ledger is None:
            e.ledger = Ledger.load(e.name, s.messages(), e.ephemeral)
        e.ledger.add_load(str(real))
        e.ledger.save()
        return _report(rep, lease)

    job = lease.submit(work)
    job.add_done_callback(lambda _f: events.put_nowait(("end", None)))

    async def result() -> dict[str, Any]:
        try:
            return await job
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - a LocalsymError or an OS error: the client's to read
            raise ApiError(400, str(e), "load_failed") from None

    async def streamed():
        while True:
            kind, data = await events.get()
            if kind == "end":
                break
            yield sse_event("progress", data)
        try:
            yield sse_event("done", await result())
        except ApiError as e:
            yield sse_event("error", error_body("openai", e.status, e.message, e.code))

    async def whole():
        await asyncio.wait({job})
        yield JSONResponse(await result()).body

    async def close(_gone: bool) -> None:
        await asyncio.wait({job})
        await lease.release()

    return Streamed(streamed() if stream else whole(), SSE if stream else JSON, on_close=close, whole=not stream)  # type: ignore[return-value]


async def sessions(request: Request) -> Response:
    st: ServerState = request.app.state.server
    pool = st.pool.entries

    def live(name: str) -> dict[str, Any]:
        e = pool.get(name)
        return {
            "open": bool(e and e.session is not None),
            "running": bool(e and e.lock.locked()),
            "waiting": e.waiting if e else 0,
        }

    rows = [r | live(r["name"]) for r in list_sessions() if not r["name"].startswith("ephemeral-")]
    return JSONResponse({"sessions": rows})


def _path_name(request: Request) -> str:
    """The session named in the URL; a bad name is the client's mistake (400), not a missing session."""
    name = request.path_params["name"]
    try:
        session_dir(name)
    except LocalsymError as e:
        raise ApiError(400, str(e).encode("utf-8", "backslashreplace").decode(), "bad_session_name") from None
    return name


async def _leased(request: Request) -> Lease | None:
    st: ServerState = request.app.state.server
    name = _path_name(request)
    if name.startswith("ephemeral-") or not session_exists(name):
        raise ApiError(404, f"no session named {name!r}", "session_not_found")
    try:
        return await st.pool.acquire(name, None, request.is_disconnected)
    except ClientGone:
        return None


async def session_info(request: Request) -> Response:
    """A session's stored exchanges and its state."""
    lease = await _leased(request)
    if lease is None:
        return Response(status_code=499)
    try:

        def read() -> dict[str, Any]:
            s = lease.session
            stt = s.status()
            return {
                "name": s.name,
                "model": s.model,
                "system": s.config.system,
                "messages": s.messages(),
                "total_tokens": stt.total_tokens,
                "blocks": stt.blocks,
                "hot_tokens": stt.hot_tokens,
                "hot_capacity": stt.hot_capacity,
                "warm_blocks": stt.warm_blocks,
                "cold_bytes": stt.cold_bytes,
            }

        return JSONResponse(await lease.call(read))
    finally:
        await lease.release()


async def session_changes(request: Request) -> Response:
    """An attached chat's look for the turns other clients make on its session (an editor
    naming it): ``?since=VERSION`` answers ``{"version"}`` alone while nothing changed, the
    messages once something did. It never waits behind a turn in progress (``"busy": true``)
    and never opens a session (``"version": null`` where the server holds none open: then
    nothing changes it here)."""
    st: ServerState = request.app.state.server
    name = _path_name(request)
    since = request.query_params.get("since", "")
    entry = st.pool.entries.get(name)
    if entry is None or entry.ephemeral or entry.session is None:
        return JSONResponse({"version": None})
    if entry.version() == since:
        return JSONResponse({"version": since})
    if entry.lock.locked():
        return JSONResponse({"version": since, "busy": True})
    try:
        lease = await st.pool.acquire(name, None, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    try:

        def read() -> tuple[str | None, list[dict]]:
            return lease.entry.version(), lease.session.messages()

        version, messages = await lease.call(read)
    finally:
        await lease.release()
    return JSONResponse({"version": version, "messages": messages})


async def session_delete(request: Request) -> Response:
    lease = await _leased(request)
    if lease is None:
        return Response(status_code=499)
    try:
        await lease.call(lease.close_session)
        await lease.call(delete_session, lease.name)
    finally:
        await lease.release()
    return JSONResponse({"deleted": lease.name})
