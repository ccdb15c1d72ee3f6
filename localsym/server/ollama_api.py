"""Ollama's API: /api/chat, /api/generate (NDJSON streaming by default, ``"stream": false``
for one object), /api/tags, /api/ps, /api/version, so clients that only know Ollama work
unchanged."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localsym.server.chat import ChatInput, ChatRun, finish_reason
from localsym.server.errors import ApiError, ClientGone
from localsym.server.inputs import fim_suffix, integer, number, read_json, session_name, split_messages, stops
from localsym.server.state import ServerState
from localsym.server.streaming import JSON, NDJSON, Streamed, ndjson
from localsym.server.structured import ollama_grammar, refuse_logprobs
from localsym.server.tools import CallFilter, ToolUse, model_style, parse_answer, plan_tools
from localsym.session import GenParams

# Ollama clients gate features on the server's version; this is the API level we follow
OLLAMA_API_VERSION = "0.9.0"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _params(body: dict[str, Any], default_max: int) -> GenParams:
    opts = body.get("options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "options must be an object")
    n = integer(opts, "num_predict", -2, 1 << 20)
    seed = integer(opts, "seed", -(1 << 63), (1 << 64) - 1)
    return GenParams(
        max_tokens=default_max if n is None or n <= 0 else n,
        temp=number(opts, "temperature", 0, 100, 0.8),
        top_p=number(opts, "top_p", 0, 1, 0.9),
        top_k=integer(opts, "top_k", 0, 1 << 20) or 40,
        min_p=number(opts, "min_p", 0, 1, 0.0),
        repeat_penalty=number(opts, "repeat_penalty", 0.01, 10, 1.0),
        seed=0xFFFFFFFF if seed is None or seed < 0 else seed & 0xFFFFFFFF,
        stop=stops(opts),
    )


def _stream(body: dict[str, Any]) -> bool:
    stream = body.get("stream", True)
    if stream is None:
        return True
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false")
    return stream


def _final(run: ChatRun) -> dict[str, Any]:
    """The last object's counts, as Ollama gives them: ``prompt_eval_count`` the whole prompt,
    ``prompt_eval_cached_count`` the part read from the session's memory (``chat.Usage``)."""
    u = run.usage()
    return {
        "done": True,
        "done_reason": finish_reason(run.turn.stats),
        **run.durations_ns(),
        "prompt_eval_count": u.prompt,
        "prompt_eval_cached_count": u.cached,
        "eval_count": u.completion,
        "localsym": run.extra(),
    }


async def _loaded(st: ServerState, body: dict[str, Any], model: str, key: str) -> Response:
    """An empty prompt or message list: Ollama's way to load a model (sessions open on
    demand), or with ``keep_alive: 0`` to unload it: every idle session is closed."""
    empty: Any = "" if key == "response" else {"role": "assistant", "content": ""}
    reason = "load"
    if _keep_alive_zero(body.get("keep_alive")):
        await st.pool.close_idle()
        await st.embeddings.close_idle()
        reason = "unload"
    return JSONResponse({"model": model, "created_at": _now(), key: empty, "done": True, "done_reason": reason})


def _keep_alive_zero(v: Any) -> bool:
    """Ollama's keep_alive: a number of seconds or a duration string ("0", "0s", "0m")."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int | float):
        return v == 0
    return isinstance(v, str) and v.strip().rstrip("smh") in ("0", "0.0")


def _tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"function": {"name": c["name"], "arguments": c["arguments"]}} for c in calls]


async def _respond(run: ChatRun, stream: bool, model: str, key: str, use: ToolUse | None = None) -> Response:
    """``key``: "message" (chat) or "response" (generate); ``use``: the answer may hold tool calls."""

    def part(text: str) -> Any:
        return {"role": "assistant", "content": text} if key == "message" else text

    async def streamed():
        calls = CallFilter(use.style) if use is not None and use.style else None
        async for piece in run.turn.pieces():
            if calls is not None:
                piece = calls.feed(piece)
                if not piece:
                    continue
            yield ndjson({"model": model, "created_at": _now(), key: part(piece), "done": False})
        if calls is not None and use is not None:
            parsed = calls.finish(use.names)
            if parsed.content or parsed.calls:
                msg = part(parsed.content) | ({"tool_calls": _tool_calls(parsed.calls)} if parsed.calls else {})
                yield ndjson({"model": model, "created_at": _now(), key: msg, "done": False})
        yield ndjson({"model": model, "created_at": _now(), key: part("")} | _final(run))

    async def whole():
        text = "".join([p async for p in run.turn.pieces()])
        msg = part(text)
        if use is not None and use.style:
            parsed = parse_answer(text, use.style, use.names)
            if parsed.calls:
                msg = part(parsed.content) | {"tool_calls": _tool_calls(parsed.calls)}
        yield json.dumps({"model": model, "created_at": _now(), key: msg} | _final(run)).encode()

    return Streamed(
        streamed() if stream else whole(),
        NDJSON if stream else JSON,
        headers=run.headers,
        on_close=run.finish,
        whole=not stream,
    )  # type: ignore[return-value]


async def chat(request: Request) -> Response:
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    model = body.get("model") or st.card.name
    stream = _stream(body)
    if not body.get("messages"):
        return await _loaded(st, body, model, "message")
    refuse_logprobs(body, "logprobs", "top_logprobs")
    messages = body.get("messages")
    if isinstance(messages, list) and any(isinstance(m, dict) and m.get("images") for m in messages):
        raise ApiError(400, "images are not supported: this server runs text models", param="messages")
    params = replace(_params(body, st.settings.default_max_tokens), grammar=ollama_grammar(body))
    conversation, tools, params, use = plan_tools(body, st.settings.model, params)
    name = session_name(request, body, False)
    if conversation is None:
        system, history, question = split_messages(messages)
        inp = ChatInput(name, system, history, question, params)
    else:
        inp = ChatInput(name, None, [], conversation[-1]["content"], params, conversation=conversation, tools=tools)
    try:
        run = await ChatRun.begin(st.pool, inp, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    return await _respond(run, stream, model, "message", use)


async def generate(request: Request) -> Response:
    """A prompt (with ``system`` and ``raw`` as Ollama has them); with a session, it continues it."""
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    model = body.get("model") or st.card.name
    stream = _stream(body)
    prompt, system = body.get("prompt"), body.get("system")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError(400, "prompt must be a string")
    if system is not None and not isinstance(system, str):
        raise ApiError(400, "system must be a string")
    if body.get("images"):
        raise ApiError(400, "images are not supported: this server runs text models")
    refuse_logprobs(body, "logprobs", "top_logprobs")
    grammar = ollama_grammar(body)
    # an empty suffix is none: Ollama's templates take their fill-in-the-middle branch only
    # for a suffix that says something ({{ if .Suffix }})
    suffix = fim_suffix(body) or None
    if not prompt or not prompt.strip():
        if suffix:  # Ollama fills a gap at the very start too; the prompt is what comes before it
            prompt = ""
        else:
            return await _loaded(st, body, model, "response")
    inp = ChatInput(
        session_name(request, body, False),
        system or None,
        [],
        prompt,
        replace(_params(body, st.settings.default_max_tokens), grammar=grammar),
        # a suffix is the model's own fill-in-the-middle markers around the prompt: never
        # wrapped in the chat template (Ollama renders its template's .Prefix/.Suffix)
        raw=body.get("raw") is True or suffix is not None,
        resend=False,
        suffix=suffix,
    )
    try:
        run = await ChatRun.begin(st.pool, inp, request.is_disconnected)
    except ClientGone:
        return Response(status_code=499)
    return await _respond(run, stream, model, "response")


def _model_entry(st: ServerState) -> dict[str, Any]:
    c = st.card
    return {
        "name": f"{c.name}:latest",
        "model": f"{c.name}:latest",
        "modified_at": _iso(c.modified),
        "size": c.size,
        "digest": c.digest,
        "details": c.details,
    }


async def tags(request: Request) -> Response:
    st: ServerState = request.app.state.server
    return JSONResponse({"models": [_model_entry(st)]})


async def ps(request: Request) -> Response:
    """The model is "loaded" while any session (or the embedding context) is open; each
    open session has its own context."""
    st: ServerState = request.app.state.server
    open_ = st.pool.open_sessions()
    if not open_ and st.embeddings.embedder is None:
        return JSONResponse({"models": []})
    entry = _model_entry(st) | {
        "expires_at": "9999-12-31T23:59:59Z",
        "size_vram": st.card.size if st.card.gpu_layers else 0,
        "context_length": st.card.n_ctx,
        "localsym": {"sessions": [e.name for e in open_ if not e.ephemeral]},
    }
    return JSONResponse({"models": [entry]})


async def show(request: Request) -> Response:
    """What Ollama clients read before a chat (the context length, what the model can do)."""
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    name = body.get("model") or body.get("name")
    if not name:
        raise ApiError(400, "model is required")
    st.check_model(name)
    c = st.card
    arch = c.details.get("family", "")
    # the context a session offers is the hot context (-c), under both names Ollama clients
    # read; older turns are kept in the session's memory, not cut from the front
    return JSONResponse(
        {
            "license": "",
            "modelfile": "",
            "parameters": f"{'num_ctx':<30} {c.n_ctx}",
            "template": "",
            "details": c.details,
            "model_info": {"general.architecture": arch, f"{arch}.context_length": c.n_ctx},
            "capabilities": ["completion", "tools"] if model_style(st.settings.model) else ["completion"],
            "modified_at": _iso(c.modified),
        }
    )


async def version(request: Request) -> Response:
    from localsym import __version__

    return JSONResponse({"version": OLLAMA_API_VERSION, "localsym": __version__})
