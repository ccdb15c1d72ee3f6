"""Which files a client may have the server read: only under the roots named at start
(``--allow-root``), judged on the real path, so a symlink or ``..`` cannot lead out."""

from __future__ import annotations

import os
from pathlib import Path

from localsym.server.errors import ApiError


def allowed_path(path: object, roots: list[Path]) -> Path:
    """The real path of ``path`` if it lies under a root; ApiError 403 (outside, or no roots
    at all) or 404 (missing) otherwise."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise ApiError(400, "path must be a non-empty string", param="path")
    if not roots:
        raise ApiError(403, "loading files is off: start the server with --allow-root DIR", "path_not_allowed")
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        raise ApiError(400, "path must be absolute", param="path")
    real = p.resolve(strict=False)
    if not any(real == r or real.is_relative_to(r) for r in roots):
        raise ApiError(403, f"{path} is outside the allowed roots", "path_not_allowed")
    if not real.exists():
        raise ApiError(404, f"{path} does not exist", "path_not_found")
    return real
