"""The warm tier (RAM, LRU, bounded in bytes) and the cold tier (content-addressed block
files on disk, bounded in bytes, shared by the sessions of one model)."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections import OrderedDict
from pathlib import Path

from localsym.errors import BudgetError
from localsym.memory import container
from localsym.memory.encoded_block import EncodedBlock

log = logging.getLogger("localsym.memory")


class WarmTier:
    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.used = 0
        self._items: OrderedDict[str, EncodedBlock] = OrderedDict()
        self.hits = self.misses = self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> EncodedBlock | None:
        eb = self._items.get(key)
        if eb is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return eb

    def put(self, key: str, eb: EncodedBlock) -> None:
        if key in self._items:
            self.used -= self._items.pop(key).nbytes
        if eb.nbytes > self.budget:
            return  # bigger than the whole tier: it lives in cold only
        self._items[key] = eb
        self.used += eb.nbytes
        while self.used > self.budget:
            _, old = self._items.popitem(last=False)  # least recently used; cold has it
            self.used -= old.nbytes
            self.evictions += 1

    def blocks(self) -> list[EncodedBlock]:
        """A snapshot (reports read it from another thread while the model thread writes)."""
        return list(self._items.values())

    def drop(self, key: str) -> None:
        eb = self._items.pop(key, None)
        if eb is not None:
            self.used -= eb.nbytes


class ColdTier:
    """One file per block key under ``root``; every file carries its own checksum."""

    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget = budget_bytes
        self.evictions = 0
        if not root.is_dir():
            root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._used: int | None = None  # summed on first need: opening a session reads no directory

    @property
    def used(self) -> int:
        if self._used is None:
            self._used = sum(
                e.stat().st_size
                for d in os.scandir(self.root)
                if d.is_dir()
                for e in os.scandir(d.path)
                if e.name.endswith(".lsb")
            )
        return self._used

    @used.setter
    def used(self, value: int) -> None:
        self._used = value

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.lsb"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, eb: EncodedBlock, meta: dict) -> int:
        p = self.path(key)
        old = p.stat().st_size if p.exists() else 0
        if eb.nbytes > self.budget:
            raise BudgetError(
                f"one block ({eb.nbytes / 2**20:.1f} MiB) is more than the whole cold budget "
                f"({self.budget / 2**20:.1f} MiB): raise --cold-gb"
            )
        if self.used - old + eb.nbytes > self.budget:  # make room down to 90%, not one block at a time
            self.evict(self.used - old + eb.nbytes - int(self.budget * 0.9), keep=key)
        size = eb.save(p, dict(meta, key=key))
        self.used += size - old
        return size

    def evict(self, need: int, keep: str | None = None) -> int:
        """Free ``need`` bytes, least recently used blocks first (a read touches a file). A
        block is content-addressed: whoever needs it again rebuilds it from its tokens."""
        files = []
        for d in os.scandir(self.root):
            if d.is_dir():
                for e in os.scandir(d.path):
                    if e.name.endswith(".lsb") and e.name != f"{keep}.lsb":
                        st = e.stat()
                        files.append((st.st_mtime, e.path, st.st_size))
        freed = 0
        for _, path, size in sorted(files):
            if freed >= need:
                break
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue  # another process evicted it
            freed += size
            self.used -= size
            self.evictions += 1
        if freed:
            log.info("cold tier over budget: evicted %.1f MiB of least recently used blocks", freed / 2**20)
        return freed

    def get(self, key: str) -> tuple[EncodedBlock, dict]:
        """Raises container.CorruptFile on a damaged file and FileNotFoundError on a missing one."""
        p = self.path(key)
        if not p.exists():
            raise FileNotFoundError(p)
        eb, meta = EncodedBlock.load(p)
        if meta.get("key") != key:  # a block file copied over another passes its own checksum
            raise container.CorruptFile(f"{p}: holds block {str(meta.get('key'))[:12]}, not {key[:12]}")
        try:
            os.utime(p)  # recently used: evicted last
        except OSError:
            pass
        return eb, meta

    def meta(self, key: str) -> dict | None:
        """A block file's header metadata (format mix, pinning), or None if it is damaged."""
        try:
            return container.read_meta(self.path(key))
        except container.CorruptFile:
            return None

    def remove(self, key: str) -> None:
        p = self.path(key)
        if p.exists():
            self.used -= p.stat().st_size
            p.unlink()


def _private(path: Path) -> None:
    """Create ``path`` owner-only (SQLite gives its -wal and -shm files the same mode), and
    make one that an older localsym created world-readable private too."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
        for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if p.exists() and p.stat().st_mode & 0o077:
                p.chmod(0o600)
    except OSError:
        pass  # a read-only store: it is opened read-only below


class SharedKeys:
    """Blocks' representative attention keys by block key, beside a model's block files and
    shared like them, so a session reusing another's blocks gets their keys without
    reading the blocks (SQLite in WAL mode: versioned by ``user_version``, atomic writes)."""

    VERSION = 1

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = root / "keys.sqlite"
        self.writable = True
        try:
            self._open(path)
        except sqlite3.OperationalError as e:
            if "disk is full" not in str(e) and "disk I/O error" not in str(e) and "locked" not in str(e):
                raise
            # a full disk (WAL's shared-memory file cannot grow) or a writer holding it: read
            # it as it is on disk; new keys are not recorded (they are recomputed on seal)
            self.writable = False
            self.db = sqlite3.connect(
                f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False, isolation_level=None
            )
            log.info("%s: opened read-only (%s)", path, e)
        except sqlite3.DatabaseError as e:  # a cache of what blocks hold: start it over
            log.warning(
                "%s is damaged (%s): starting it over (block keys are recomputed as blocks are sealed)", path, e
            )
            for p in (path, path.with_name("keys.sqlite-wal"), path.with_name("keys.sqlite-shm")):
                p.unlink(missing_ok=True)
            self._open(path)

    def _open(self, path: Path) -> None:
        _private(path)
        self.db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA busy_timeout = 5000")
        if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: no fsync per block; the keys can be recomputed
        if self.db.execute("PRAGMA user_version").fetchone()[0] == 0:
            self.db.executescript(
                "BEGIN; CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, attn BLOB NOT NULL); "
                f"PRAGMA user_version = {self.VERSION}; COMMIT;"
            )
        self.db.execute("SELECT 1 FROM keys LIMIT 1").fetchone()

    def get(self, key: str) -> bytes | None:
        row = self.db.execute("SELECT attn FROM keys WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, attn: bytes) -> None:
        if not self.writable:
            return
        self.db.execute("INSERT OR REPLACE INTO keys(key, attn) VALUES (?, ?)", (key, attn))

    def close(self) -> None:
        self.db.close()
