"""The user's settings: ``config.toml`` in the config dir (``LOCALSYM_HOME/config`` when
set) and ``LOCALSYM_*`` environment variables.

```toml
[run]              # defaults for the flags of run, ask, load, chat, show and serve
model = "smollm2-135m"
ctx_size = 8192        # -c (0: the model's own)
n_gpu_layers = "auto"  # -ngl: auto, all, or a number (-1 = all)
vram = "auto"          # --vram: 8GiB, auto, cpu
threads = 4            # -t
cache_type_k = "q8_0"  # -ctk
cache_type_v = "q8_0"  # -ctv
flash_attn = "on"      # -fa: on, off, auto
n_cpu_moe = 0          # --n-cpu-moe
temp = 0.7             # --temp
top_k = 40
top_p = 0.95
min_p = 0.05
repeat_penalty = 1.0
seed = 42
n_predict = 256        # -n (-1: no limit)
system = "You are terse."   # run's system prompt

[memory]           # sessions
warm_mb = 256      # RAM for the warm tier
cold_gb = 20       # disk for the cold tier
block_tokens = 256 # new sessions only: blocks already cut stay cut
```

Every key is a flag's long name with ``_`` for ``-``; ``ctx``, ``ngl``, ``temperature`` and
``num_predict`` are accepted too. The environment variable of a key is ``LOCALSYM_`` and
its name in capitals (``LOCALSYM_CTX_SIZE=4096``, ``LOCALSYM_WARM_MB=512``). The order, strongest
first: a flag, the environment, what a session stored, the config file, the default. A
session's model, like its block size, is fixed once the session exists.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from localsym import paths
from localsym.errors import LocalsymError


def _int(v: Any) -> int:
    if isinstance(v, bool) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError
    f = float(v)
    if not math.isfinite(f):
        raise ValueError
    return f


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError
    return v


def ngl(v: Any) -> int | None:
    """``-ngl`` as llama.cpp takes it: ``auto`` (None: fitted), ``all`` (-1), or layers >= -1."""
    if isinstance(v, str) and v.strip().lower() in ("auto", "all"):
        return None if v.strip().lower() == "auto" else -1
    n = _int(v)
    if n < -1:
        raise ValueError
    return n


def flash(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if v not in ("on", "off", "auto"):
        raise ValueError
    return str(v)


def _nonneg_int(v: Any) -> int:
    n = _int(v)
    if n < 0:
        raise ValueError
    return n


def _pos_int(v: Any) -> int:
    n = _int(v)
    if n < 1:
        raise ValueError
    return n


def _nonneg_float(v: Any) -> float:
    f = _float(v)
    if f < 0:
        raise ValueError
    return f


def _unit(v: Any) -> float:
    f = _float(v)
    if not 0 <= f <= 1:
        raise ValueError
    return f


def _n_predict(v: Any) -> int:
    n = _int(v)
    if n != -1 and n < 1:
        raise ValueError
    return n


def _seed(v: Any) -> int:
    n = _int(v)
    if n < -1:
        raise ValueError
    return n


# key -> (converter, what it must be, the argparse dest of its flag)
RUN: dict[str, tuple[Callable[[Any], Any], str, str]] = {
    "model": (_str, "a model name or path", "model"),
    "ctx_size": (_nonneg_int, "0 (the model's own) or a token count", "n_ctx"),
    "n_gpu_layers": (ngl, "auto, all, or a layer count (-1 = all)", "n_gpu_layers"),
    "vram": (_str, "a size (8GiB), auto or cpu", "vram"),
    "threads": (_pos_int, "an integer >= 1", "n_threads"),
    "cache_type_k": (_str, "a cache type (f16, q8_0, q4_0...)", "type_k"),
    "cache_type_v": (_str, "a cache type (f16, q8_0, q4_0...)", "type_v"),
    "flash_attn": (flash, "on, off or auto", "flash_attn"),
    "n_cpu_moe": (_nonneg_int, "an integer >= 0", "n_cpu_moe"),
    "temp": (_nonneg_float, "a number >= 0", "temp"),
    "top_k": (_nonneg_int, "an integer >= 0 (0 = off)", "top_k"),
    "top_p": (_unit, "a number from 0 to 1", "top_p"),
    "min_p": (_unit, "a number from 0 to 1", "min_p"),
    "repeat_penalty": (_nonneg_float, "a number >= 0 (1 = off)", "repeat_penalty"),
    "seed": (_seed, "an integer (-1 = random)", "seed"),
    "n_predict": (_n_predict, "-1 (no limit) or at least 1", "n_predict"),
    "system": (_str, "text", "system"),
}
ALIASES = {"ctx": "ctx_size", "ngl": "n_gpu_layers", "temperature": "temp", "num_predict": "n_predict"}
# what each run key is when nothing sets it (None: the fit plan / the model decides)
RUN_DEFAULTS: dict[str, Any] = {
    "model": None,
    "ctx_size": None,
    "n_gpu_layers": None,
    "vram": None,
    "threads": None,
    "cache_type_k": None,
    "cache_type_v": None,
    "flash_attn": None,
    "n_cpu_moe": None,
    "temp": 0.0,
    "top_k": 40,
    "top_p": 0.95,
    "min_p": 0.05,
    "repeat_penalty": 1.0,
    "seed": -1,
    "n_predict": 256,
    "system": None,
}

MEMORY = {
    "warm_mb": float,
    "cold_gb": float,
    "block_tokens": int,
    "working_set_tokens": int,
    "recent_tokens": int,
    "ingest_window": int,
    "kv_format": str,
}
KNOWN: dict[str, dict[str, Any]] = {"run": dict.fromkeys(RUN, str), "memory": MEMORY}


def path() -> Path:
    return paths.config_file()


def check_run(key: str, value: Any, origin: str) -> Any:
    """A run setting converted and checked, or one line naming where it came from."""
    conv, what, _ = RUN[key]
    try:
        return conv(value)
    except (TypeError, ValueError, OverflowError):
        raise LocalsymError(f"{origin}: {key} must be {what}, not {value!r}") from None


def load() -> dict[str, dict[str, Any]]:
    """The config file's sections, every value checked; {} when there is no file."""
    p = path()
    if not p.exists():
        return {}
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise LocalsymError(f"{p}: cannot read the config file ({e})") from None
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in KNOWN or not isinstance(values, dict):
            raise LocalsymError(f"{p}: unknown section [{section}] (known: {', '.join(KNOWN)})")
        for key, value in values.items():
            if section == "run":
                key = ALIASES.get(key, key)
                if key not in RUN:
                    raise LocalsymError(f"{p}: unknown key {key!r} in [run] (known: {', '.join(RUN)})")
                out.setdefault(section, {})[key] = check_run(key, value, f"{p}: [run]")
                continue
            kind = MEMORY.get(key)
            if kind is None:
                raise LocalsymError(f"{p}: unknown key {key!r} in [{section}] (known: {', '.join(MEMORY)})")
            try:
                if kind is float and not math.isfinite(float(value)):
                    raise ValueError
                out.setdefault(section, {})[key] = kind(value)
            except (TypeError, ValueError):
                raise LocalsymError(f"{p}: {section}.{key} must be a finite {kind.__name__}") from None
    return out


def env_name(key: str) -> str:
    return "LOCALSYM_" + key.upper()


def env_run(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The run settings set in the environment (``LOCALSYM_CTX_SIZE``...), checked."""
    environ = os.environ if environ is None else environ
    out = {}
    for key in RUN:
        raw = environ.get(env_name(key))
        if raw is None or raw == "":
            continue
        value: Any = raw
        if RUN[key][0] not in (_str, ngl, flash):
            try:
                value = float(raw) if "." in raw or "e" in raw.lower() else int(raw)
            except ValueError:
                pass  # the converter names it
        out[key] = check_run(key, value, env_name(key))
    return out


def env_memory(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The session settings set in the environment (``LOCALSYM_WARM_MB``...), unchecked:
    ``resolve_config`` checks them with the rest."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key in (*MEMORY, "max_file_bytes"):
        raw = environ.get(env_name(key))
        if raw:
            out[key] = raw
    return out
