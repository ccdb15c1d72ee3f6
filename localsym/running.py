"""What localsym is running right now, for `localsym ps`.

Two sources, both cheap: sessions held open (their lock file is locked by a live process:
read from ``/proc/locks`` on Linux, without touching the lock; elsewhere a non-blocking
try that is released at once), and a small JSON file per running `run` or `serve` process
in ``paths.run_dir()``, written when it starts and removed when it ends. A file whose
process is gone (killed with -9) is not listed and is removed on the next look.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from localsym import paths


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, OSError):
        return None


@contextmanager
def registered(kind: str, **info: Any) -> Iterator[None]:
    """Lists this process under ``kind`` while the block runs (best effort: a read-only
    data dir never stops a command)."""
    pid = os.getpid()
    path = paths.run_dir() / f"{kind}-{pid}.json"
    record = {"kind": kind, "pid": pid, "started": time.time(), "create_time": _started(pid), **info}
    try:
        paths.ensure(paths.run_dir())
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        path = None  # type: ignore[assignment]
    try:
        yield
    finally:
        if path is not None:
            path.unlink(missing_ok=True)


def processes(gone: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The `run` and `serve` processes alive now, oldest first. The records of processes
    that ended without removing theirs (killed with -9) are removed, and added to ``gone``."""
    root = paths.run_dir()
    out = []
    if root.is_dir():
        for f in root.glob("*.json"):
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
                pid = int(rec["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            created = _started(pid)
            # a pid the system gave to another process since (the recorded start differs)
            if created is None or (rec.get("create_time") and abs(created - rec["create_time"]) > 1):
                f.unlink(missing_ok=True)
                if gone is not None:
                    gone.append(rec)
                continue
            rec.pop("create_time", None)
            out.append(rec)
    return sorted(out, key=lambda r: r.get("started", 0))


def _proc_flocks() -> dict[tuple[int, int], int] | None:
    """(device, inode) -> pid of every flock held now, or None off Linux. Each is also
    keyed (-1, inode): some filesystems (btrfs subvolumes, overlays) give stat() another
    device number than /proc/locks shows."""
    try:
        text = Path("/proc/locks").read_text()
    except OSError:
        return None
    held = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[1] == "->" or parts[1] != "FLOCK":
            continue
        try:
            pid = int(parts[4])
            major, minor, inode = parts[5].split(":")
            held[(os.makedev(int(major, 16), int(minor, 16)), int(inode))] = pid
            held.setdefault((-1, int(inode)), pid)
        except ValueError:
            continue
    return held


def lock_holder(lock_path: Path, flocks: dict[tuple[int, int], int] | None) -> int | None:
    """The pid holding ``lock_path`` (0 when held but the pid is unknown), else None."""
    try:
        st = lock_path.stat()
    except OSError:
        return None
    if flocks is not None:
        return flocks.get((st.st_dev, st.st_ino), flocks.get((-1, st.st_ino)))
    import filelock

    lock = filelock.FileLock(str(lock_path), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        return 0
    lock.release()
    return None


def command_of(pid: int) -> str:
    """The holder's command line, shortened to what the user typed after `localsym`."""
    try:
        argv = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return ""
    for i, word in enumerate(argv):
        if word == "localsym" or word.endswith("/localsym"):
            return " ".join(["localsym", *argv[i + 1 :]])
    return " ".join(argv)
