"""Which implementation runs: ``LOCALSYM_DEVICE=cpu|cuda|auto`` (auto: CUDA when a GPU is
usable, else the CPU). Kept apart so kernels stay numpy-in, numpy-out."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from functools import lru_cache


@lru_cache(maxsize=1)
def cuda_usable() -> bool:
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def device() -> str:
    want = os.environ.get("LOCALSYM_DEVICE", "auto").lower()
    if want not in ("cpu", "cuda", "auto"):
        raise ValueError(f"LOCALSYM_DEVICE must be cpu, cuda or auto, not {want!r}")
    if want == "cuda" and not cuda_usable():
        raise ValueError("LOCALSYM_DEVICE=cuda but no CUDA device is usable")
    if want == "auto":
        return "cuda" if cuda_usable() and os.environ.get("NUMBA_ENABLE_CUDASIM") != "1" else "cpu"
    return want


_CHOSEN: dict[tuple[str, tuple], Callable] = {}


def fastest(name: str, shape: tuple, cpu: Callable, gpu: Callable) -> Callable:
    """The implementation of kernel ``name`` to run on data of ``shape``.

    ``LOCALSYM_DEVICE=cpu|cuda`` forces one. Under ``auto`` with a usable GPU the first call
    for a shape runs both (each once to compile and warm, once timed) and keeps the faster
    for that shape: a GPU kernel that is fast alone can lose to the CPU on small arrays,
    where transfers and launches cost more than the work, so it is measured, not assumed.
    """
    mode = device()
    if mode == "cpu" or os.environ.get("LOCALSYM_DEVICE", "auto").lower() == "cuda":
        return cpu if mode == "cpu" else gpu
    key = (name, tuple(shape))
    chosen = _CHOSEN.get(key)
    if chosen is not None:
        return chosen

    def trial(*args):
        times = {}
        result = None
        for f in (cpu, gpu):
            f(*args)
            t0 = time.perf_counter()
            result = f(*args)
            times[f] = time.perf_counter() - t0
        _CHOSEN[key] = min(times, key=times.__getitem__)
        return result

    return trial


PARALLEL = threading.Lock()  # one parallel CPU region at a time in this process (see __init__)


def serialized(fn: Callable) -> Callable:
    """A parallel ``@njit`` kernel called under the process-wide lock."""

    @functools.wraps(fn)
    def call(*args: object) -> object:
        with PARALLEL:
            return fn(*args)

    return call
