"""Which implementation runs: ``LOCALSYM_DEVICE=cpu|cuda|auto`` (auto: CUDA when a GPU is
usable, else the CPU). Kept apart so kernels stay numpy-in, numpy-out."""

from __future__ import annotations

import os
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
