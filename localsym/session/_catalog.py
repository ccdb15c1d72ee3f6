"""The sessions on this machine: names, listing, renaming, deleting."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import filelock

from localsym import paths
from localsym.errors import LocalsymError
from localsym.memory.index_db import IndexDB

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# a diverged history the server set aside: NAME~prev (NAME~prev2, ... while that one is open).
# '~' is in no name a user can give, so no session of theirs is ever taken for one.
_PREV = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,63})~prev([2-9]|[1-9][0-9]+)?$")


def session_dir(name: str) -> Path:
    if not isinstance(name, str) or not (_NAME.fullmatch(name) or _PREV.fullmatch(name)):
        raise LocalsymError(f"bad session name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    return paths.sessions_dir() / name


def is_set_aside(name: str) -> bool:
    """A name only ``set_aside`` makes (users cannot create one)."""
    return isinstance(name, str) and bool(_PREV.fullmatch(name))


def _locked(d: Path) -> filelock.BaseFileLock | None:
    """The session folder's lock, taken; None when a process (this one too) has it open."""
    lock = filelock.FileLock(str(d / "session.lock"), mode=0o600, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return None
    return lock


def set_aside(name: str) -> str:
    """Move session ``name`` (closed) to ``NAME~prev``, its own diverged history, and return
    that name. Only ``NAME``'s own earlier ``~prev`` is replaced; while that one is open
    somewhere the next free ``NAME~prevN`` is used instead. Never touches another session."""
    if not session_exists(name):
        raise LocalsymError(f"no session named {name!r}")
    if is_set_aside(name):
        raise LocalsymError(f"{name!r} is a set-aside history: start a new session instead")
    for n in range(1, 1000):
        prev = f"{name}~prev" if n == 1 else f"{name}~prev{n}"
        d = session_dir(prev)
        if not d.exists():
            rename_session(name, prev)
            return prev
        lock = _locked(d)
        if lock is None:
            continue  # open in a process (a client reads it): keep it, use the next name
        try:
            shutil.rmtree(d)
        finally:
            lock.release()
        rename_session(name, prev)
        return prev
    raise LocalsymError(f"too many set-aside histories of {name!r} are open")


def session_exists(name: str) -> bool:
    return (session_dir(name) / "session.db").exists()


def list_sessions() -> list[dict]:
    """Every session with its model and size; a damaged one is listed with its problem
    instead of taking the listing down."""
    root = paths.sessions_dir()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            db_path = d / "session.db"
            if not db_path.exists():
                continue
            try:
                db = IndexDB(db_path, readonly=True)
                try:
                    out.append(
                        {
                            "name": d.name,
                            "model": db.get("model"),
                            "tokens": db.get("total_tokens", 0),
                            "updated": db.get("updated", 0),
                        }
                    )
                finally:
                    db.close()
            except (LocalsymError, sqlite3.Error) as e:
                out.append({"name": d.name, "model": None, "tokens": 0, "updated": 0, "problem": str(e)})
    return out


def rename_session(old: str, new: str) -> None:
    src, dst = session_dir(old), session_dir(new)
    if not (src / "session.db").exists():
        raise LocalsymError(f"no session named {old!r}")
    if dst.exists():
        raise LocalsymError(f"a session named {new!r} already exists")
    src.rename(dst)


def delete_session(name: str) -> None:
    """Removes the session's index; its blocks stay in the model's shared block cache."""
    d = session_dir(name)
    if not (d / "session.db").exists():
        raise LocalsymError(f"no session named {name!r}")
    shutil.rmtree(d)


def open_sessions() -> list[dict]:
    """The sessions a live process holds open now (its lock taken): name, model, pid and
    the holder's command line. Reads the locks without taking them where the system can
    (Linux: /proc/locks), so looking never makes another process's open fail."""
    from localsym import running

    root = paths.sessions_dir()
    flocks = running._proc_flocks()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            pid = running.lock_holder(d / "session.lock", flocks)
            if pid is None:
                continue
            model = None
            try:
                db = IndexDB(d / "session.db", readonly=True)
                try:
                    model = db.get("model")
                finally:
                    db.close()
            except (LocalsymError, sqlite3.Error, OSError):
                pass
            out.append({"name": d.name, "model": model, "pid": pid, "command": running.command_of(pid) if pid else ""})
    return out


def session_settings(name: str) -> dict:
    """What a session stored: ``{"model": ..., "config": {...}}`` (empty when there is no
    such session), read without opening it (no lock, no model load)."""
    db_path = session_dir(name) / "session.db"
    if not db_path.exists():
        return {}
    try:
        db = IndexDB(db_path, readonly=True)
        try:
            stored = db.get("config") or {}
            return {"model": db.get("model"), "config": stored if isinstance(stored, dict) else {}}
        finally:
            db.close()
    except sqlite3.Error as e:
        raise LocalsymError(f"{db_path}: cannot read the session ({e})") from None


def discard_new(d: Path) -> None:
    """What a session's first open wrote before it failed (its index and SQLite's side
    files): an open that failed leaves no session behind for `sessions` to list."""
    for f in ("session.db", "session.db-wal", "session.db-shm", "session.db-journal"):
        (d / f).unlink(missing_ok=True)
