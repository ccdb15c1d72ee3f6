"""The user's config file: ``config.toml`` in the config dir (``LOCALSYM_HOME/config`` when set).

```toml
[memory]
warm_mb = 256      # RAM for the warm tier
cold_gb = 20       # disk for the cold tier
block_tokens = 256 # new sessions only: blocks already cut stay cut
```
"""

from __future__ import annotations

import tomllib
from typing import Any

from localsym import paths
from localsym.errors import LocalsymError

KNOWN = {
    "memory": {
        "warm_mb": float,
        "cold_gb": float,
        "block_tokens": int,
        "working_set_tokens": int,
        "recent_tokens": int,
        "ingest_window": int,
        "kv_format": str,
    }
}


def load() -> dict[str, dict[str, Any]]:
    path = paths.config_dir() / "config.toml"
    if not path.exists():
        return {}
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise LocalsymError(f"{path}: cannot read the config file ({e})") from None
    out: dict[str, dict[str, Any]] = {}
    for section, values in raw.items():
        if section not in KNOWN or not isinstance(values, dict):
            raise LocalsymError(f"{path}: unknown section [{section}] (known: {', '.join(KNOWN)})")
        for key, value in values.items():
            kind = KNOWN[section].get(key)
            if kind is None:
                raise LocalsymError(f"{path}: unknown key {key!r} in [{section}]")
            try:
                out.setdefault(section, {})[key] = kind(value)
            except (TypeError, ValueError):
                raise LocalsymError(f"{path}: {section}.{key} must be a {kind.__name__}") from None
    return out
