"""Trimming the heap: runs on glibc, is rate-limited, and a trimmed heap keeps working."""

import platform

import numpy as np
import pytest

from localsym.memory import heap


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_runs_on_glibc_and_is_rate_limited():
    big = [np.ones(1 << 20, np.uint8) for _ in range(8)]
    del big
    assert heap.trim(force=True)
    assert not heap.trim()  # within MIN_INTERVAL_S of the last one
    after = np.ones(1 << 20, np.uint8)  # the allocator still serves what it handed back
    assert int(after.sum()) == 1 << 20
