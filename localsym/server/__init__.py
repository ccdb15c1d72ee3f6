"""`localsym serve`: OpenAI- and Ollama-compatible HTTP APIs over localsym sessions, so
editors, coding agents and web UIs get unbounded, persistent, prompt-cached conversations.

Needs the ``serve`` extra (Starlette, uvicorn, sse-starlette); ``serve()`` says so in one
line when it is missing.
"""

from __future__ import annotations

import importlib.util

from localsym.errors import LocalsymError

EXTRA = ("starlette", "uvicorn", "sse_starlette", "anyio")


def missing_extra() -> list[str]:
    return [m for m in EXTRA if importlib.util.find_spec(m) is None]


def serve(settings) -> None:
    """Run the server until interrupted (``settings``: a ServerSettings)."""
    missing = missing_extra()
    if missing:
        raise LocalsymError(
            f"`localsym serve` needs the serve extra ({', '.join(missing)} missing): pip install 'localsym[serve]'"
        )
    from localsym.server.run import run

    run(settings)
