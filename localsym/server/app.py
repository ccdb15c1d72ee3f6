"""The routes, the error handlers (every error in its API's JSON shape, never a traceback)
and the app's life: sessions are closed cleanly when the server stops."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from localsym.server import load_api, ollama_api, openai_api, session_api
from localsym.server.embeddings import ollama_embed, ollama_embeddings, openai_embeddings
from localsym.server.errors import ApiError, classify, error_response
from localsym.server.guard import Guard, request_id
from localsym.server.settings import LOCAL_HOSTS
from localsym.server.state import ServerState

log = logging.getLogger("localsym.server")


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    _log_client_error(request, exc)
    return error_response(request.url.path, exc)


# routes of the OpenAI and Ollama APIs that localsym does not serve (yet): a client told 501
# "not supported" knows to stop asking, where "no route" reads like a wrong base URL
UNSUPPORTED = (
    "/v1/images/",
    "/v1/audio/",
    "/v1/files",
    "/v1/fine_tuning/",
    "/v1/batches",
    "/v1/moderations",
    "/v1/responses",
    "/v1/assistants",
    "/v1/threads",
    "/api/create",
    "/api/copy",
    "/api/push",
    "/api/blobs/",
)


def _unsupported(path: str) -> bool:
    return any(path == u.rstrip("/") or (u.endswith("/") and path.startswith(u)) for u in UNSUPPORTED)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404 and _unsupported(path):
        err = ApiError(501, f"{path} is not supported by localsym", "not_supported")
        _log_client_error(request, err)
        return error_response(path, err)
    msg = {404: f"no route {path}", 405: f"{request.method} is not allowed on {path}"}
    err = ApiError(exc.status_code, msg.get(exc.status_code, str(exc.detail)), headers=dict(exc.headers or {}))
    _log_client_error(request, err)
    return error_response(request.url.path, err)


async def _crash(request: Request, exc: Exception) -> Response:
    """Every other exception: what the client sent (4xx, one log line), a known condition
    of this machine (a full disk, a busy session), or our own bug (500, the traceback in the
    log under the request id). Never a dead process."""
    rid = request_id(request.scope)
    err = classify(exc)
    if err is None:
        log.error("%s %s failed (%s)", request.method, request.url.path, rid, exc_info=exc)
        err = ApiError(500, f"internal error (request {rid}; see the server's log)")
    elif err.status >= 500:
        log.error("%s %s: %s (%s)", request.method, request.url.path, err.message, rid)
    else:
        _log_client_error(request, err)
    return error_response(request.url.path, err)


def _bounded(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """The route's own error boundary: an exception becomes its API's error response here
    (Starlette's last-resort handler would answer too, but re-raise it into uvicorn's log)."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (ApiError, HTTPException):
            raise
        except Exception as exc:  # noqa: BLE001 - the boundary: classified, never lost
            return await _crash(request, exc)

    return run


def _log_client_error(request: Request, err: ApiError) -> None:
    if err.status < 500:
        log.warning(
            "%s %s -> %d %s (%s)", request.method, request.url.path, err.status, err.message, request_id(request.scope)
        )


async def _root(request: Request) -> Response:
    return Response("localsym is running\n", media_type="text/plain")  # what Ollama's root says, in kind


def build_app(state: ServerState) -> ASGIApp:
    routes = [
        Route("/", _bounded(_root), methods=["GET", "HEAD"]),
        Route("/v1/chat/completions", _bounded(openai_api.chat_completions), methods=["POST"]),
        Route("/v1/completions", _bounded(openai_api.completions), methods=["POST"]),
        Route("/v1/models", _bounded(openai_api.list_models), methods=["GET"]),
        Route("/v1/embeddings", _bounded(openai_embeddings), methods=["POST"]),
        Route("/v1/models/{model:path}", _bounded(openai_api.get_model), methods=["GET"]),
        Route("/api/chat", _bounded(ollama_api.chat), methods=["POST"]),
        Route("/api/generate", _bounded(ollama_api.generate), methods=["POST"]),
        Route("/api/embed", _bounded(ollama_embed), methods=["POST"]),
        Route("/api/embeddings", _bounded(ollama_embeddings), methods=["POST"]),
        Route("/api/tags", _bounded(ollama_api.tags), methods=["GET"]),
        Route("/api/ps", _bounded(ollama_api.ps), methods=["GET"]),
        Route("/api/show", _bounded(ollama_api.show), methods=["POST"]),
        Route("/api/version", _bounded(ollama_api.version), methods=["GET"]),
        Route("/localsym/load", _bounded(load_api.load), methods=["POST"]),
        Route("/localsym/sessions", _bounded(load_api.sessions), methods=["GET"]),
        Route("/localsym/sessions/{name}", _bounded(load_api.session_info), methods=["GET"]),
        Route("/localsym/sessions/{name}/messages", _bounded(load_api.session_changes), methods=["GET"]),
        Route("/localsym/sessions/{name}", _bounded(load_api.session_delete), methods=["DELETE"]),
        Route("/localsym/server", _bounded(session_api.server_info), methods=["GET"]),
        Route("/localsym/open", _bounded(session_api.open_session), methods=["POST"]),
        Route("/localsym/ask", _bounded(session_api.ask), methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await state.pool.close_all()
        state.embeddings.close()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _crash},
    )
    app.state.server = state
    st = state.settings
    return Guard(app, st.api_key, st.max_body, local=st.host in LOCAL_HOSTS)
