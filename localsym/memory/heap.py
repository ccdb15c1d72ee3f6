"""Handing freed heap pages back to the OS, so that a session's RSS stays flat.

Sealing frees a multi-megabyte state blob and an evicted warm block per block. glibc's malloc
serves blocks that big from mmap at first, but after the first free it raises its mmap
threshold to that size and serves the next ones from the heap and per-thread arenas, where
freed pages stay resident (measured: a 32K-token load kept 26 MB of freed memory, and RSS
crept ~300 KB a block past the warm tier's budget). ``malloc_trim(0)`` releases them, at a cost:
the next seal faults the pages back in (~0.8 ms on 2 cores, against ~1000 ms to decode a
block there). It is glibc's own; elsewhere (musl, macOS, Windows) ``trim`` does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading
import time
from collections.abc import Callable

MIN_INTERVAL_S = 0.5  # a GPU seals a block every few ms: trim at most this often

_lock = threading.Lock()
_last = 0.0


def _load() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


_malloc_trim = _load()


def trim(force: bool = False) -> bool:
    """Release free heap pages (at most every ``MIN_INTERVAL_S`` unless ``force``); True when
    it ran."""
    global _last
    if _malloc_trim is None:
        return False
    now = time.monotonic()
    with _lock:
        if not force and now - _last < MIN_INTERVAL_S:
            return False
        _last = now
    _malloc_trim(0)
    return True
