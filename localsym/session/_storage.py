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


def _blocks_dir(model_id: str) -> Path:
    return paths.data_dir() / "blocks" / model_id[:24]


def _size(p: Path) -> int:
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


def remove_model(name: str) -> tuple[LocalModel, int]:
    """Unregister a model (deleting the file only if localsym copied it in) and free what
    was made for it: its shared block cache and learned expert routing. Returns the
    model and the bytes freed besides its file."""
    path = model_store.resolve(name)
    model_id = model_store.identity(path)
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
    return m, freed


def prune_blocks() -> tuple[int, int]:
    """Delete the block files no session refers to (content-addressed blocks stay after a
    session is deleted, for reuse); a session whose index cannot be read keeps every block
    of its model. Returns (files, bytes) removed."""
    used: dict[str, set[str]] = {}
    keep_all: set[str] = set()
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
        for f in model_dir.glob("*/*.lsb"):
            if f.stem not in keys:
                freed += f.stat().st_size
                f.unlink(missing_ok=True)
                files += 1
    return files, freed
