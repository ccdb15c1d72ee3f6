"""Where localsym keeps things.

platformdirs' per-user folders by default; ``LOCALSYM_HOME`` moves every one of them
under a single root, which is also how the tests isolate themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "localsym"


def _home() -> Path | None:
    value = os.environ.get("LOCALSYM_HOME")
    return Path(value).expanduser() if value else None


def data_dir() -> Path:
    home = _home()
    return home / "data" if home else Path(platformdirs.user_data_dir(APP))


def config_dir() -> Path:
    home = _home()
    return home / "config" if home else Path(platformdirs.user_config_dir(APP))


def cache_dir() -> Path:
    home = _home()
    return home / "cache" if home else Path(platformdirs.user_cache_dir(APP))


def log_dir() -> Path:
    home = _home()
    return home / "logs" if home else Path(platformdirs.user_log_dir(APP))


def models_dir() -> Path:
    return data_dir() / "models"


def sessions_dir() -> Path:
    return data_dir() / "sessions"


def run_dir() -> Path:
    """One small file per running `run`/`serve` process (what `localsym ps` lists)."""
    return data_dir() / "run"


def config_file() -> Path:
    return config_dir() / "config.toml"


def ensure(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
