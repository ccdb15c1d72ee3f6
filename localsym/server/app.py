"""The routes, the error handlers (every error in its API's JSON shape, never a traceback)
and the app's life: sessions are closed cleanly when the server stops."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from localsym.server import load_api, ollama_api, openai_api
from localsym.server.errors import ApiError, error_response
from localsym.server.guard import Guard
from localsym.server.settings import LOCAL_HOSTS
from localsym.server.state import ServerState

log = logging.getLogger("localsym.server")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(request.url.path, exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    msg = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
    return error_response(
        request.url.path,
        ApiError(exc.status_code, msg.get(exc.status_code, str(exc.detail)), headers=dict(exc.headers or {})),
    )


async def _crash(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(request.url.path, ApiError(500, "internal error (see the server's log)"))


async def _root(request: Request) -> Response:
    return Response("localsym is running\n", media_type="text/plain")  # what Ollama's root says, in kind


def build_app(state: ServerState) -> ASGIApp:
    routes = [
        Route("/", _root, methods=["GET", "HEAD"]),
        Route("/v1/chat/completions", openai_api.chat_completions, methods=["POST"]),
        Route("/v1/completions", openai_api.completions, methods=["POST"]),
        Route("/v1/models", openai_api.list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", openai_api.get_model, methods=["GET"]),
        Route("/api/chat", ollama_api.chat, methods=["POST"]),
        Route("/api/generate", ollama_api.generate, methods=["POST"]),
        Route("/api/tags", ollama_api.tags, methods=["GET"]),
        Route("/api/ps", ollama_api.ps, methods=["GET"]),
        Route("/api/show", ollama_api.show, methods=["POST"]),
        Route("/api/version", ollama_api.version, methods=["GET"]),
        Route("/localsym/load", load_api.load, methods=["POST"]),
        Route("/localsym/sessions", load_api.sessions, methods=["GET"]),
        Route("/localsym/sessions/{name}", load_api.session_info, methods=["GET"]),
        Route("/localsym/sessions/{name}", load_api.session_delete, methods=["DELETE"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await state.pool.close_all()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _crash},
    )
    app.state.server = state
    st = state.settings
    return Guard(app, st.api_key, st.max_body, local=st.host in LOCAL_HOSTS)
