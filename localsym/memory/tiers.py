"""The warm tier (RAM, LRU, bounded in bytes) and the cold tier (content-addressed block
files on disk, bounded in bytes, shared by the sessions of one model)."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

from localsym.errors import BudgetError
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

    def drop(self, key: str) -> None:
        eb = self._items.pop(key, None)
        if eb is not None:
            self.used -= eb.nbytes


class ColdTier:
    """One file per block key under ``root``; every file carries its own checksum."""

    def __init__(self, root: Path, budget_bytes: int) -> None:
        self.root = root
        self.budget = budget_bytes
        root.mkdir(parents=True, exist_ok=True)
        self.used = sum(e.stat().st_size for d in os.scandir(root) if d.is_dir() for e in os.scandir(d.path)
                        if e.name.endswith(".lsb"))

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.lsb"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, eb: EncodedBlock, meta: dict) -> int:
        p = self.path(key)
        old = p.stat().st_size if p.exists() else 0
        if self.used - old + eb.nbytes > self.budget:
            raise BudgetError(f"the cold store is full ({self.used / 2**30:.2f} of {self.budget / 2**30:.2f} GiB): "
                              f"raise --cold-gb or remove old sessions")
        size = eb.save(p, dict(meta, key=key))
        self.used += size - old
        return size

    def get(self, key: str) -> tuple[EncodedBlock, dict]:
        """Raises container.CorruptFile on a damaged file and FileNotFoundError on a missing one."""
        p = self.path(key)
        if not p.exists():
            raise FileNotFoundError(p)
        return EncodedBlock.load(p)

    def remove(self, key: str) -> None:
        p = self.path(key)
        if p.exists():
            self.used -= p.stat().st_size
            p.unlink()
