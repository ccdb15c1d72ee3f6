"""Starting the server: the checks that must pass before it listens, then uvicorn."""

from __future__ import annotations

import sys

import uvicorn

from localsym.errors import LocalsymError
from localsym.server.app import build_app
from localsym.server.settings import LOCAL_HOSTS, ServerSettings
from localsym.server.state import ServerState


def check(settings: ServerSettings) -> None:
    if settings.host not in LOCAL_HOSTS and not settings.api_key:
        raise LocalsymError(
            f"refusing to listen on {settings.host} without an API key: give --api-key KEY (or set LOCALSYM_API_KEY)"
        )
    if settings.max_sessions < 1:
        raise LocalsymError("--max-sessions must be at least 1")
    if settings.queue < 0:
        raise LocalsymError("--queue must be 0 or more")
    if not 0 < settings.port < 65536:
        raise LocalsymError("--port must be between 1 and 65535")
    for r in settings.allow_roots:
        if not r.is_dir():
            raise LocalsymError(f"--allow-root {r}: not a directory")


def run(settings: ServerSettings) -> None:
    check(settings)
    state = ServerState.create(settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    roots = ", ".join(map(str, settings.allow_roots)) or "none (loading files is off)"
    sys.stderr.write(
        f"localsym serve: {state.card.name} on http://{host}:{settings.port} "
        f"(OpenAI: /v1, Ollama: /api); up to {settings.max_sessions} open sessions; "
        f"load roots: {roots}; {'API key required' if settings.api_key else 'no API key'}\n"
    )
    sys.stderr.flush()
    uvicorn.run(
        build_app(state), host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10
    )
