"""A session's settings and where each one came from.

Weakest first: the defaults, the config file's ``[memory]`` section, what the session
stored, the environment (``LOCALSYM_WARM_MB``...; never stored), then the caller's
overrides (command-line flags, ``/set``). A session stores only
what was set for it and what its blocks depend on (block size, ingest window, system
prompt), so editing the config file still reaches old sessions' budgets. Every value is
checked before anything is stored: a ``nan`` budget once saved made every later open fail.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from localsym.errors import LocalsymError
from localsym.ingest import MAX_FILE_BYTES

DEFAULT_SYSTEM = (
    "You are a helpful assistant. Answer from the documents and the conversation "
    "below; quote names, numbers and keys exactly."
)
FIXED = ("block_tokens", "ingest_window", "system")
KV_FORMATS = ("adaptive", "f16", "q8", "q4", "q3", "q2")  # part of every block's key: kept once set


@dataclass
class SessionConfig:
    block_tokens: int = 256
    warm_mb: float = 256.0
    cold_gb: float = 20.0
    system: str = DEFAULT_SYSTEM
    working_set_tokens: int | None = None  # documents restored per question (default: half the hot context)
    recent_tokens: int = 1024  # the latest conversation always comes along
    ingest_window: int = 2048  # how far back a document's block sees its own earlier text
    max_file_bytes: int = MAX_FILE_BYTES
    kv_format: str = "adaptive"  # how sealed blocks keep their KV: adaptive, or one of f16, q8, q4, q3, q2


_RULES: dict[str, tuple[type, float, float]] = {  # name -> (type, min, max)
    "block_tokens": (int, 16, 8192),
    "warm_mb": (float, 0, 1 << 30),
    "cold_gb": (float, 1e-6, 1 << 30),
    "working_set_tokens": (int, 1, 1 << 31),
    "recent_tokens": (int, 0, 1 << 31),
    "ingest_window": (int, 0, 1 << 31),
    "max_file_bytes": (int, 1, 1 << 40),
}


def check_value(name: str, value: Any) -> Any:
    """The value converted to its type, or a one-line error naming the setting."""
    if name == "system":
        if not isinstance(value, str):
            raise LocalsymError("system must be text")
        return value
    if name == "kv_format":
        if value not in KV_FORMATS:
            raise LocalsymError(f"kv_format must be one of {', '.join(KV_FORMATS)}, not {value!r}")
        return value
    if name == "working_set_tokens" and value is None:
        return None
    if name not in _RULES:
        raise LocalsymError(f"unknown setting {name!r} (known: {', '.join(f.name for f in fields(SessionConfig))})")
    kind, lo, hi = _RULES[name]
    try:
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError
        v = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise LocalsymError(f"{name} must be a{'n integer' if kind is int else ' number'}, not {value!r}") from None
    if isinstance(v, float) and not math.isfinite(v) or not lo <= v <= hi:
        raise LocalsymError(f"{name} must be between {lo:g} and {hi:g}, not {value!r}")
    return v


def resolve_config(
    stored: dict[str, Any],
    file: dict[str, Any],
    overrides: dict[str, Any],
    model: dict[str, Any] | None = None,
    env: dict[str, Any] | None = None,
) -> tuple[SessionConfig, dict[str, str], dict[str, Any]]:
    """(the settings, where each came from, what the session should store). ``model``: what
    the model's own store suggests (Ollama's system prompt), just above the defaults.
    ``env``: the environment's settings (None: read ``LOCALSYM_*`` now), never stored."""
    from localsym.config import env_memory, env_name

    env = env_memory() if env is None else env
    values = asdict(SessionConfig())
    source = dict.fromkeys(values, "default")
    layers = (("model", model or {}), ("config file", file), ("session", stored), ("env", env), ("flag", overrides))
    for origin, layer in layers:
        for k, v in layer.items():
            if k not in values:
                if origin == "session":
                    continue  # a setting an older localsym stored
                raise LocalsymError(f"unknown setting {k!r} (from the {origin})")
            if origin == "session" and k in FIXED and k in overrides and overrides[k] != v:
                continue  # checked below: blocks already cut keep their layout
            try:
                values[k], source[k] = check_value(k, v), origin
            except LocalsymError as e:
                if origin == "env":
                    raise LocalsymError(f"{env_name(k)}: {e}") from None
                if origin != "session":
                    raise
                # a bad value an older localsym stored: the weaker sources stand
    for k in FIXED:
        if k in stored and k != "system" and values[k] != stored[k]:
            values[k], source[k] = stored[k], "session"  # blocks already cut stay cut
    to_store = {k: values[k] for k in values if source[k] in ("session", "flag") or k in FIXED}
    return SessionConfig(**values), source, to_store
