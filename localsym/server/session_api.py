"""localsym's own routes for its own faces: `localsym chat` and `localsym run` attached to a
running server (``localsym.session.connect``), so the chat and an editor share one model
and one session.

- ``GET /localsym/server``: who answers (localsym's version, the pid, the model served),
  asked with a short timeout before a face attaches.
- ``POST /localsym/open``: ``{"session", "system"?, "quant_mix"?}``: the session opened (or
  created) and its state: messages, status, settings, chat template.
- ``POST /localsym/ask``: ``{"session"?, "question", "system"?, "raw"?, "params"?}``: a turn
  streamed as NDJSON, ``{"piece": TEXT}`` lines then ``{"done": true, "stats", "status"}``
  with the answer's sources and warnings. Without a session it runs in a throwaway one, as
  the chat APIs do. It goes through the chat APIs' machinery (``ChatRun``: the pool's lease,
  the ledger, so an OpenAI client naming the session recognises the turn), and a client that
  leaves stops the turn between two tokens; what was made is stored.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localsym.server.chat import ChatInput, ChatRun
from localsym.server.errors import ApiError, ClientGone
from localsym.server.inputs import SESSION_HEADER, integer, number, read_json, stops
from localsym.server.sessions import Lease
from localsym.server.state import ServerState
from localsym.server.streaming import NDJSON, Streamed, ndjson
from localsym.session import GenParams

NO_LIMIT = 1 << 30  # the faces' "-n -1": the answer's room in the hot context bounds it


async def server_info(request: Request) -> Response:
    from localsym import __version__

    st: ServerState = request.app.state.server
    return JSONResponse(
        {
            "localsym": __version__,
            "pid": os.getpid(),
            "model": st.card.name,
            "model_path": str(st.card.path),
            "load": bool(st.settings.allow_roots),
        }
    )


def _session(request: Request, body: dict[str, Any], required: bool) -> str | None:
    name = body.get("session")
    if name is None:
        name = request.headers.get(SESSION_HEADER)
    if name is not None and (not isinstance(name, str) or not name):
        raise ApiError(400, "session must be a non-empty string", param="session")
    if name is None and required:
        raise ApiError(400, 'name the session ("session" or the X-Localsym-Session header)', param="session")
    if name is not None and name.startswith("ephemeral-"):
        raise ApiError(400, "session names starting with 'ephemeral-' are the server's own", param="session")
    return name


def _text(body: dict[str, Any], key: str) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise ApiError(400, f"{key} must be a string", param=key)
    return v


def _flag(body: dict[str, Any], key: str) -> bool:
    v = body.get(key, False)
    if not isinstance(v, bool):
        raise ApiError(400, f"{key} must be true or false", param=key)
    return v


def _params(body: dict[str, Any]) -> GenParams:
    """GenParams by their own names (what the faces hold), each checked."""
    p = body.get("params") or {}
    if not isinstance(p, dict):
        raise ApiError(400, "params must be an object", param="params")
    d = GenParams()
    return GenParams(
        max_tokens=integer(p, "max_tokens", 1, NO_LIMIT) or d.max_tokens,
        temp=number(p, "temp", 0, 100, d.temp),
        top_k=_int_or(p, "top_k", 0, 1 << 20, d.top_k),
        top_p=number(p, "top_p", 0, 1, d.top_p),
        min_p=number(p, "min_p", 0, 1, d.min_p),
        repeat_penalty=number(p, "repeat_penalty", 0, 100, d.repeat_penalty),
        seed=_int_or(p, "seed", 0, 0xFFFFFFFF, d.seed),
        stop=stops(p),
    )


def _int_or(p: dict[str, Any], key: str, lo: int, hi: int, default: int) -> int:
    v = integer(p, key, lo, hi)
    return default if v is None else v


def _state(lease: Lease, mix: bool) -> dict[str, Any]:
    """(worker) What a face shows of a session."""
    s = lease.session
    d: dict[str, Any] = {
        "name": s.name,
        "model": s.model,
        "config": dict(s.config.__dict__),
        "messages": s.messages(),
        "status": asdict(s.status()),
        "chat_template": s.chat_template(),
        "version": lease.entry.version(),
    }
    if mix:
        d["quant_mix"] = s.quant_mix()
    return d


async def open_session(request: Request) -> Response:
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    name = _session(request, body, True)
    system, mix = _text(body, "system"), _flag(body, "quant_mix")
    try:
        lease = await st.pool.acquire(name, system, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    try:

        def work() -> dict[str, Any]:
            if system is not None and lease.session.config.system != system:
                lease.close_session()  # the system prompt is every block's sink: reopened around it
                lease.open_session({"system": system})
            return _state(lease, mix)

        return JSONResponse(await lease.call(work))
    finally:
        await lease.release()


async def ask(request: Request) -> Response:
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    name = _session(request, body, False)
    question = _text(body, "question")
    if not question or not question.strip():
        raise ApiError(400, "question must be a non-empty string", param="question")
    inp = ChatInput(name, _text(body, "system"), [], question, _params(body), raw=_flag(body, "raw"), resend=False)
    try:
        run = await ChatRun.begin(st.pool, inp, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)

    async def events():
        async for piece in run.turn.pieces():
            yield ndjson({"piece": piece})
        stats = run.turn.stats
        status = await run.lease.call(lambda: asdict(run.lease.session.status()))
        yield ndjson(
            {
                "done": True,
                "session": None if run.lease.entry.ephemeral else run.lease.name,
                "mode": run.prepared.mode,
                "stats": stats.as_dict() if stats is not None else None,
                "status": status,
            }
        )

    return Streamed(events(), NDJSON, headers=run.headers, on_close=run.finish)  # type: ignore[return-value]
