"""Starting the server: the checks that must pass before it listens, then uvicorn."""

from __future__ import annotations

import errno
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import replace
from types import FrameType

import uvicorn

from localsym.errors import LocalsymError
from localsym.runtime.limits import MAX_CTX
from localsym.server.app import build_app
from localsym.server.settings import DEFAULT_EMBED_CTX, LOCAL_HOSTS, ServerSettings
from localsym.server.state import ServerState
from localsym.session import raised_note, session_min_ctx

MAX_PARALLEL = 64  # three llama.cpp sequences each: within its 256


def check(settings: ServerSettings) -> None:
    if settings.host not in LOCAL_HOSTS and not settings.api_key:
        raise LocalsymError(
            f"refusing to listen on {settings.host} without an API key: give --api-key KEY (or set LOCALSYM_API_KEY)"
        )
    if settings.max_sessions < 1:
        raise LocalsymError("--max-sessions must be at least 1")
    if not 0 <= settings.opts.parallel <= MAX_PARALLEL:
        raise LocalsymError(f"--parallel must be between 0 and {MAX_PARALLEL}")
    if settings.queue < 0:
        raise LocalsymError("--queue must be 0 or more")
    if not 0 < settings.port < 65536:
        raise LocalsymError("--port must be between 1 and 65535")
    for r in settings.allow_roots:
        if not r.is_dir():
            raise LocalsymError(f"--allow-root {r}: not a directory")
    settings.embed_ctx = embed_ctx(settings.embed_ctx)


def embed_ctx(given: int | None) -> int:
    """The embedding context's size: as given, else LOCALSYM_EMBED_CTX, else the default."""
    if given is None:
        raw = os.environ.get("LOCALSYM_EMBED_CTX", "").strip()
        if not raw:
            return DEFAULT_EMBED_CTX
        try:
            given = int(raw)
        except ValueError:
            raise LocalsymError(f"LOCALSYM_EMBED_CTX must be a token count, not {raw!r}") from None
    if not 1 <= given <= MAX_CTX:
        raise LocalsymError(f"the embedding context must be 1 to {MAX_CTX} tokens, not {given}")
    return given


def _raise_small_ctx(settings: ServerSettings) -> None:
    """``serve -c 2``: raised at start to what a session works in (said on the console),
    never an abort at the first request."""
    from localsym import config
    from localsym.session import SessionConfig

    block = config.load().get("memory", {}).get("block_tokens")
    floor = session_min_ctx(block if isinstance(block, int) and block > 0 else SessionConfig.block_tokens)
    note = raised_note(settings.opts.n_ctx, floor)
    if note:
        settings.opts = replace(settings.opts, n_ctx=floor)
        sys.stderr.write(f"localsym serve: note: {note}\n")


def run(settings: ServerSettings) -> None:
    check(settings)
    _raise_small_ctx(settings)
    state = ServerState.create(settings)
    sock = _bind(settings.host, settings.port)  # before the banner: a port in use is the only line
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    roots = ", ".join(map(str, settings.allow_roots)) or "none (loading files is off)"
    sys.stderr.write(
        f"localsym serve: {state.card.name} on http://{host}:{settings.port} "
        f"(OpenAI: /v1, Ollama: /api); up to {settings.max_sessions} open sessions"
        + (
            f", {settings.opts.parallel} at a time in one shared context; "
            if settings.opts.parallel
            else ", a context each; "
        )
        + f"load roots: {roots}; {'API key required' if settings.api_key else 'no API key'}\n"
    )
    sys.stderr.flush()
    config = uvicorn.Config(
        build_app(state), host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10
    )
    try:
        _Server(config, state.pool.stop_answers).run(sockets=[sock])
    finally:
        sock.close()


class _Server(uvicorn.Server):
    """uvicorn, stopping the answers still running at Ctrl+C (each stores itself as
    stopped) before it waits for their requests to end: not after its 10 s grace."""

    def __init__(self, config: uvicorn.Config, stop_answers: Callable[[], None]) -> None:
        super().__init__(config)
        self._stop_answers = stop_answers

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._stop_answers()
        super().handle_exit(sig, frame)


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a port in use (or an address this machine
    lacks) is one line before anything says "serving"."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)  # as uvicorn does
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = "the port is in use (another server?)" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise LocalsymError(f"cannot listen on {host}:{port}: {why}") from None
    sock.set_inheritable(True)
    return sock
