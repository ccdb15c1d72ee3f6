"""What localsym keeps on disk beyond one session: removing a model with everything made
for it, and pruning blocks that no session uses any more."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from localsym import model_store, paths
from localsym.errors import LocalsymError
from localsym.memory.index_db import IndexDB
from localsym.model_store import LocalModel
from localsym.session._catalog import open_sessions


def _blocks_dir(model_id: str) -> Path:
    return paths.data_dir() / "blocks" / model_id[:24]


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def _session_model_id(d: Path) -> str:
    db = IndexDB(d / "session.db", readonly=True)
    try:
        return str(db.get("model_id") or "")
    finally:
        db.close()


def open_users() -> dict[str, list[dict]]:
    """Sessions a live process holds open now, by their model's block folder name (the
    first 24 characters of its identity): name, pid and the holder's command line."""
    out: dict[str, list[dict]] = {}
    for s in open_sessions():
        try:
            model_id = _session_model_id(paths.sessions_dir() / s["name"])
        except (sqlite3.Error, LocalsymError, OSError):
            model_id = ""  # unreadable: counted against every model below
        out.setdefault(model_id[:24], []).append(s)
    return out


def _holders(users: list[dict]) -> str:
    said = [f"session {u['name']!r} in pid {u['pid']}" + (f" ({u['command']})" if u["command"] else "") for u in users]
    return ", ".join(said)


def remove_model(name: str, force: bool = False) -> tuple[LocalModel, int, list[dict]]:
    """Unregister a model (deleting the file only if localsym copied it in) and free what
    was made for it: its shared block cache and learned expert routing. Refused while a
    process has a session of it open, unless ``force``. Returns the model, the bytes freed
    besides its file, and the open sessions it was removed from under (``force``)."""
    path = model_store.resolve(name)
    model_id = model_store.identity(path)
    users = open_users()
    using = users.get(model_id[:24], []) + users.get("", [])
    if using and not force:
        raise LocalsymError(
            f"{name} is in use: {_holders(using)}; close it first, or `rm --force` (those sessions "
            f"lose the model and its cached blocks under them)"
        )
    m = model_store.remove(name)
    still_used = any(model_store.identity(o.path) == model_id for o in model_store.list_models() if o.path.exists())
    freed = 0
    if not still_used:
        for p in (_blocks_dir(model_id), paths.data_dir() / "experts" / f"{model_id[:24]}.npz"):
            freed += _size(p)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
    return m, freed, using


def prune_blocks() -> tuple[int, int]:
    """Delete the block files no session refers to (content-addressed blocks stay after a
    session is deleted, for reuse). Kept besides: every block of a model a live process has
    a session of open (a load writes block files before their index rows: looked at again
    just before each model's files go, so a load that began meanwhile keeps them), and of a
    model a session whose index cannot be read uses. Returns (files, bytes) removed."""
    used: dict[str, set[str]] = {}
    users = open_users()
    keep_all: set[str] = set(users)
    if "" in users:  # an open session whose model is unknown: keep everything
        blocks_root = paths.data_dir() / "blocks"
        keep_all.update(p.name for p in blocks_root.iterdir()) if blocks_root.is_dir() else None
    root = paths.sessions_dir()
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        if not (d / "session.db").exists():
            continue
        try:
            db = IndexDB(d / "session.db", readonly=True)
            try:
                model_id = str(db.get("model_id") or "")
                keys = {r[0] for r in db.db.execute("SELECT key FROM blocks").fetchall()}
            finally:
                db.close()
        except (sqlite3.Error, LocalsymError):  # an unreadable session: keep every model's blocks
            blocks_root = paths.data_dir() / "blocks"
            keep_all.update(p.name for p in blocks_root.iterdir()) if blocks_root.is_dir() else None
            continue
        used.setdefault(model_id[:24], set()).update(keys)
    files = freed = 0
    blocks = paths.data_dir() / "blocks"
    for model_dir in sorted(blocks.iterdir()) if blocks.is_dir() else []:
        if model_dir.name in keep_all:
            continue
        keys = used.get(model_dir.name, set())
        now = open_users()
        if model_dir.name in now or "" in now:
            continue  # a load (or a chat) on it started since: its new blocks are not indexed yet
        for f in model_dir.glob("*/*.lsb"):
            if f.stem not in keys:
                freed += f.stat().st_size
                f.unlink(missing_ok=True)
                files += 1
    return files, freed
