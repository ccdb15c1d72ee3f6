"""What `localsym serve` was started with: one model, the roots files may be loaded from,
the key, and the bounds on open sessions and waiting requests."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from localsym.session import RunOptions

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_PORT = 11435  # beside Ollama's 11434
MAX_BODY = 8 * 2**20
DEFAULT_EMBED_CTX = 2048


@dataclass
class ServerSettings:
    model: str  # a registered name or a GGUF path: every session of this server runs it
    opts: RunOptions = field(default_factory=RunOptions)
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    allow_roots: list[Path] = field(default_factory=list)  # resolved; loads outside them are refused
    api_key: str | None = None
    max_sessions: int = 4  # open sessions (opts.parallel of them resident in one context); the LRU idle one is closed
    queue: int = 8  # requests that may wait for one session (and for a free slot) before a 503
    max_body: int = MAX_BODY
    default_max_tokens: int = 512
    # OpenAI's ``user`` names a session only when asked: web UIs send one ``user`` for all of
    # a person's chats, and separate chats must not share one memory
    session_from_user: bool = False
    # the embedding context, in tokens: the longest input (at most the model's own context);
    # None: LOCALSYM_EMBED_CTX, else DEFAULT_EMBED_CTX (``run.check`` settles it)
    embed_ctx: int | None = None


def resolve_roots(roots: list[str]) -> list[Path]:
    """``--allow-root`` values as real paths (symlinks resolved), the form paths are judged in."""
    return [Path(os.path.expanduser(r)).resolve(strict=False) for r in roots]
