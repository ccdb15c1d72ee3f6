"""Walk a file or a tree the way a user expects: .gitignore respected (via pathspec),
binaries and huge files skipped with a reason, symlinks never followed out of the tree."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pathspec

from localsym.errors import LocalsymError

MAX_FILE_BYTES = 1 << 20  # 1 MiB: bigger text files are almost always data, not code
ALWAYS_SKIP = {".git", ".hg", ".svn", "__pycache__", "node_modules", ".venv", ".mypy_cache", ".pytest_cache"}


@dataclass
class WalkResult:
    files: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)


def _is_binary(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(8192)
    if b"\0" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        return e.start < len(head) - 4  # a cut multi-byte character at the end is fine
    return False


def _gitignore(dir_: Path, root: Path) -> pathspec.PathSpec | None:
    gi = dir_ / ".gitignore"
    if not gi.is_file():
        return None
    lines = gi.read_text(encoding="utf-8", errors="replace").splitlines()
    rel = dir_.relative_to(root).as_posix()
    if rel != ".":  # a nested .gitignore speaks of paths below its own folder
        lines = [_anchor(line, rel) for line in lines]
    return pathspec.GitIgnoreSpec.from_lines(lines)


def _anchor(line: str, rel: str) -> str:
    s = line.strip()
    if not s or s.startswith("#"):
        return s
    neg = s.startswith("!")
    body = s[1:] if neg else s
    if "/" in body.rstrip("/"):
        body = f"{rel}/{body.lstrip('/')}"
    else:
        body = f"{rel}/**/{body}"
    return ("!" if neg else "") + body


def walk(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> WalkResult:
    root = Path(path).expanduser()
    if not root.exists():
        raise LocalsymError(f"{root}: no such file or folder")
    if not os.access(root, os.R_OK):
        raise LocalsymError(f"{root}: permission denied")
    out = WalkResult()
    if not root.is_dir():  # a file, or a FIFO/device/socket that _consider turns away
        _consider(root, out, max_bytes)
        return out
    root = root.resolve()
    specs: list[pathspec.PathSpec] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        d = Path(dirpath)
        spec = _gitignore(d, root)
        if spec is not None:
            specs.append(spec)
        keep = []
        for name in sorted(dirnames):
            sub = d / name
            rel = sub.relative_to(root).as_posix() + "/"
            if name in ALWAYS_SKIP or any(s.match_file(rel) for s in specs):
                continue
            if sub.is_symlink():
                out.skipped.append((sub, "symlinked folder (not followed)"))
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            f = d / name
            rel = f.relative_to(root).as_posix()
            if name == ".gitignore" or any(s.match_file(rel) for s in specs):
                continue
            if f.is_symlink():
                target = f.resolve()
                if not target.is_relative_to(root):
                    out.skipped.append((f, "symlink out of the tree"))
                    continue
            _consider(f, out, max_bytes)
    return out


def _consider(f: Path, out: WalkResult, max_bytes: int) -> None:
    try:
        size = f.stat().st_size
        if not f.is_file():
            out.skipped.append((f, "not a regular file"))
        elif size > max_bytes:
            out.skipped.append((f, f"too big ({size / 2**20:.1f} MiB > {max_bytes / 2**20:.1f} MiB)"))
        elif size == 0:
            out.skipped.append((f, "empty"))
        elif _is_binary(f):
            out.skipped.append((f, "binary"))
        else:
            out.files.append(f)
    except PermissionError:
        out.skipped.append((f, "permission denied"))
    except OSError as e:
        out.skipped.append((f, f"unreadable ({e.strerror})"))
