"""Experts are contiguous byte ranges of a GGUF's 3-D ``*_exps`` tensors (expert e is
bytes [e*nb2, (e+1)*nb2) of the tensor), and llama.cpp mmaps weights, so asking the kernel
to read a predicted expert's ranges ahead (``posix_fadvise(WILLNEED)``) warms the page
cache before the layer runs. Prefetched bytes are bounded by a RAM budget."""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from pathlib import Path

from localsym.runtime.gguf_file import read_header

_EXPS = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")


class ExpertFileMap:
    """(layer, expert) -> [(file offset, length)] over the file's expert tensors."""

    def __init__(self, path: Path) -> None:
        h = read_header(path)
        arch = h.metadata.get("general.architecture", "")
        self.n_expert = int(h.metadata.get(f"{arch}.expert_count", 0))
        self.ranges: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for t in h.tensors:
            m = _EXPS.match(t.name)
            if not m or not self.n_expert:
                continue
            layer = int(m.group(1))
            per = t.nbytes // self.n_expert
            for e in range(self.n_expert):
                self.ranges.setdefault((layer, e), []).append((h.data_offset + t.offset + e * per, per))

    def nbytes(self, layer: int, expert: int) -> int:
        return sum(n for _, n in self.ranges.get((layer, expert), ()))


class Prefetcher:
    def __init__(self, path: Path, budget_bytes: int) -> None:
        self.map = ExpertFileMap(path)
        self.fd = os.open(path, os.O_RDONLY)
        self.budget = budget_bytes
        self.resident: OrderedDict[tuple[int, int], int] = OrderedDict()
        self.used = 0
        self.issued = 0

    def willneed(self, layer: int, experts) -> None:
        for e in experts:
            key = (layer, int(e))
            if key in self.resident:
                self.resident.move_to_end(key)
                continue
            for off, n in self.map.ranges.get(key, ()):
                os.posix_fadvise(self.fd, off, n, os.POSIX_FADV_WILLNEED)
                self.issued += n
            size = self.map.nbytes(*key)
            self.resident[key] = size
            self.used += size
            while self.used > self.budget and self.resident:
                old, n_old = self.resident.popitem(last=False)
                self.used -= n_old

    def drop_all(self) -> None:
        """Drop the whole file from the page cache (for cold-start measurements)."""
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
        self.resident.clear()
        self.used = 0

    def close(self) -> None:
        os.close(self.fd)
