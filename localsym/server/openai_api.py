"""OpenAI's API: /v1/chat/completions, /v1/completions, /v1/models. A response carries a
``localsym`` field (how the request met the session) and X-Localsym-* headers."""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localsym.server.chat import ChatInput, ChatRun, finish_reason
from localsym.server.errors import ApiError, ClientGone
from localsym.server.inputs import (
    content_text,
    fim_suffix,
    integer,
    number,
    read_json,
    session_name,
    split_messages,
    stops,
)
from localsym.server.state import ServerState
from localsym.server.streaming import JSON, SSE, Streamed, sse
from localsym.server.structured import openai_grammar, refuse_logprobs
from localsym.server.tools import CallFilter, parse_answer, plan_tools
from localsym.session import GenParams

GONE = Response(status_code=499)  # nginx's "client closed request": nobody reads it


def _params(body: dict[str, Any], default_max: int) -> GenParams:
    if integer(body, "n", 1, 1) not in (None, 1):
        raise ApiError(400, "n must be 1", param="n")
    max_tokens = integer(body, "max_completion_tokens", 1, 1 << 20) or integer(body, "max_tokens", 1, 1 << 20)
    seed = integer(body, "seed", -(1 << 63), (1 << 64) - 1)
    return GenParams(
        max_tokens=max_tokens or default_max,
        temp=number(body, "temperature", 0, 2, 1.0),
        top_p=number(body, "top_p", 0, 1, 1.0),
        seed=0xFFFFFFFF if seed is None else seed & 0xFFFFFFFF,
        stop=stops(body),
    )


def _stream_flags(body: dict[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be true or false", param="stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    return stream, bool(opts.get("include_usage"))


def _usage(run: ChatRun) -> dict[str, Any]:
    """OpenAI's usage: the whole prompt, and in ``prompt_tokens_details.cached_tokens`` the part
    of it the session's memory held, so not prefilled for this request (``chat.Usage``)."""
    u = run.usage()
    return {
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
    }


async def chat_completions(request: Request) -> Response:
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    refuse_logprobs(body, "logprobs", "top_logprobs")
    params = replace(_params(body, st.settings.default_max_tokens), grammar=openai_grammar(body))
    conversation, tools, params, use = plan_tools(body, st.settings.model, params)
    stream, include_usage = _stream_flags(body)
    if conversation is None:
        system, history, question = split_messages(body.get("messages"))
        inp = ChatInput(session_name(request, body, st.settings.session_from_user), system, history, question, params)
    else:
        question = conversation[-1]["content"]
        inp = ChatInput(
            session_name(request, body, st.settings.session_from_user),
            None,
            [],
            question,
            params,
            conversation=conversation,
            tools=tools,
        )
    try:
        run = await ChatRun.begin(st.pool, inp, request.is_disconnected)
    except ClientGone:
        return GONE
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time()), st.card.name

    def chunk(delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        out = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}],
        }
        return out | {"usage": None} if include_usage else out

    async def streamed():
        opened = False
        calls = CallFilter(use.style) if use.style else None
        async for piece in run.turn.pieces():
            if not opened:
                opened = True
                yield sse(chunk({"role": "assistant", "content": ""}))
            if calls is not None:
                piece = calls.feed(piece)
            if piece:
                yield sse(chunk({"content": piece}))
        if not opened:
            yield sse(chunk({"role": "assistant", "content": ""}))
        reason = finish_reason(run.turn.stats)
        if calls is not None:
            parsed = calls.finish(use.names)
            if parsed.content:
                yield sse(chunk({"content": parsed.content}))
            for i, c in enumerate(parsed.calls):
                head = {"index": i, "id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": ""}}
                yield sse(chunk({"tool_calls": [head]}))
                args = {"index": i, "function": {"arguments": json.dumps(c["arguments"])}}
                yield sse(chunk({"tool_calls": [args]}))
            if parsed.calls:
                reason = "tool_calls"
        last = chunk({}, reason)
        last["localsym"] = run.extra()
        yield sse(last)
        if include_usage:
            yield sse(chunk({}) | {"choices": [], "usage": _usage(run)})
        yield sse("[DONE]")

    async def whole():
        text = "".join([p async for p in run.turn.pieces()])
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        reason = finish_reason(run.turn.stats)
        if use.style:
            parsed = parse_answer(text, use.style, use.names)
            if parsed.calls:
                message["content"] = parsed.content or None
                message["tool_calls"] = [
                    {
                        "id": c["id"],
                        "type": "function",
                        "function": {"name": c["name"], "arguments": json.dumps(c["arguments"])},
                    }
                    for c in parsed.calls
                ]
                reason = "tool_calls"
        yield json.dumps(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "system_fingerprint": None,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                "usage": _usage(run),
                "localsym": run.extra(),
            }
        ).encode()

    return Streamed(
        streamed() if stream else whole(),
        SSE if stream else JSON,
        headers=run.headers,
        on_close=run.finish,
        whole=not stream,
    )  # type: ignore[return-value]


async def completions(request: Request) -> Response:
    """Prompt in, completion out, no chat framing. With a session, the prompt continues it."""
    st: ServerState = request.app.state.server
    body = await read_json(request, st.settings.max_body)
    st.check_model(body.get("model"))
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    suffix = fim_suffix(body)
    if prompt is None and suffix:  # a gap at the very start of a file
        prompt = ""
    if not isinstance(prompt, str) or not (prompt.strip() or (suffix and suffix.strip())):
        raise ApiError(400, "prompt must be a non-empty string (one prompt per request)", param="prompt")
    for unsupported in ("logprobs", "best_of"):
        if body.get(unsupported) not in (None, 0, 1, False):
            raise ApiError(400, f"{unsupported} is not supported", param=unsupported)
    echo = body.get("echo") is True
    params = _params(body, st.settings.default_max_tokens)
    stream, include_usage = _stream_flags(body)
    inp = ChatInput(
        session_name(request, body, st.settings.session_from_user),
        None,
        [],
        content_text(prompt, "prompt"),
        params,
        raw=True,
        resend=False,
        suffix=suffix,
    )
    try:
        run = await ChatRun.begin(st.pool, inp, request.is_disconnected)
    except ClientGone:
        return GONE
    cid, created, model = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time()), st.card.name

    def choice(text: str, reason: str | None) -> dict[str, Any]:
        out = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": reason}],
        }
        return out | {"usage": None} if include_usage and stream else out

    async def streamed():
        if echo:
            yield sse(choice(prompt, None))
        async for piece in run.turn.pieces():
            yield sse(choice(piece, None))
        last = choice("", finish_reason(run.turn.stats))
        last["localsym"] = run.extra()
        yield sse(last)
        if include_usage:
            yield sse(choice("", None) | {"choices": [], "usage": _usage(run)})
        yield sse("[DONE]")

    async def whole():
        text = "".join([p async for p in run.turn.pieces()])
        out = choice((prompt if echo else "") + text, finish_reason(run.turn.stats))
        yield json.dumps(out | {"usage": _usage(run), "localsym": run.extra()}).encode()

    return Streamed(
        streamed() if stream else whole(),
        SSE if stream else JSON,
        headers=run.headers,
        on_close=run.finish,
        whole=not stream,
    )  # type: ignore[return-value]


def _model_obj(st: ServerState) -> dict[str, Any]:
    """The model as OpenAI lists it, with the context a session offers under the names
    clients read: ``context_length`` (OpenRouter, LM Studio's requests, Zed) and
    ``max_model_len`` (vLLM, SGLang). It is the hot context, ``-c`` tokens per session: a
    message and its answer must fit it, while older turns are kept in the session's memory
    rather than cut from the front."""
    c = st.card
    return {
        "id": c.name,
        "object": "model",
        "created": int(c.modified),
        "owned_by": "localsym",
        "context_length": c.n_ctx,
        "max_model_len": c.n_ctx,
    }


async def list_models(request: Request) -> Response:
    st: ServerState = request.app.state.server
    return JSONResponse({"object": "list", "data": [_model_obj(st)]})


async def get_model(request: Request) -> Response:
    st: ServerState = request.app.state.server
    st.check_model(request.path_params["model"])
    return JSONResponse(_model_obj(st))
