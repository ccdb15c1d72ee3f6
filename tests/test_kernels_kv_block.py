"""Whole-block KV kernels: every version against the numpy reference, any strides."""

import numpy as np
import pytest

from kernels_numba import kv_block as kb

SHAPES = [(3, 70, 130), (2, 40, 64)]  # ragged groups both ways; small for the CUDA simulator


def _case(shape, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 3).astype(np.float16).view(np.uint16)
    L = shape[0]
    bits = np.array([b for _, b in zip(range(L), rng.permutation([16, 8, 4, 3, 2]))], np.uint8)
    pc = np.array([b in (2, 3, 4) and i % 2 == 0 for i, b in enumerate(bits)], bool)
    tlo, thi, clo, chi, _ = kb.ranges_ref(x, True)
    zs, ss = [], []
    for i in range(L):
        if bits[i] != 16:
            z, s = kb.params_ref(*((clo[i], chi[i]) if pc[i] else (tlo[i], thi[i])), int(bits[i]))
            zs.append(z.ravel())
            ss.append(s.ravel())
    return x, bits, pc, np.concatenate(zs), np.concatenate(ss)


@pytest.mark.parametrize("shape", SHAPES)
def test_ranges_parity(shape):
    x = _case(shape, 1)[0]
    ref = kb.ranges_ref(x, True)
    got = kb.ranges_cuda(x, True)  # the CPU's are measured inside the seal (test_kernels_kv_seal)
    for a, b in zip(ref[:4], got[:4]):
        assert np.array_equal(a, b)
    assert np.allclose(ref[4], got[4], rtol=1e-5)
    assert kb.ranges_ref(x, False)[2].shape[2] == 0
    # per-token ranges (and sums of squares) only for the masked layers, NaN elsewhere
    mask = np.arange(shape[0]) % 2 == 0
    want = kb.ranges_ref(x, True, mask)
    assert np.isnan(want[0][~mask]).all() and np.array_equal(want[0][mask], ref[0][mask])
    got = kb.ranges_cuda(x, True, mask)
    for a, b in zip(want, got):
        assert np.array_equal(a, b, equal_nan=True) or np.allclose(a, b, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_encode_decode_parity_any_strides(shape, seed):
    x, bits, pc, zero, scale = _case(shape, seed)
    ref = kb.encode_ref(x, bits, pc, zero, scale)
    for impl in (kb.encode_cpu, kb.encode_cuda):
        assert np.array_equal(impl(x, bits, pc, zero, scale), ref), impl.__name__
    want = np.zeros_like(x)
    kb.decode_ref(ref, bits, pc, zero, scale, want)
    for impl in (kb.decode_cpu, kb.decode_cuda):
        out = np.zeros_like(x)
        impl(ref, bits, pc, zero, scale, out)
        assert np.array_equal(out, want), impl.__name__
        # a transposed destination (V in a blob without flash attention)
        buf = np.zeros((shape[0], shape[2], shape[1]), np.uint16)
        impl(ref, bits, pc, zero, scale, buf.transpose(0, 2, 1))
        assert np.array_equal(buf.transpose(0, 2, 1), want), impl.__name__
    # f16 layers come back bit for bit; quantized ones within half a step
    f = kb.H2F
    for i, b in enumerate(bits):
        if b == 16:
            assert np.array_equal(want[i], x[i])
        else:
            assert np.abs(f[want[i]] - f[x[i]]).max() < 2.0 * 3 * 8 / ((1 << int(b)) - 1) + 1e-2


def test_errors_are_clear():
    with pytest.raises(ValueError, match="bits"):
        kb.offsets(np.array([5], np.uint8), np.array([False]), 8, 8)
    with pytest.raises(ValueError, match="uint16"):
        kb.encode(np.zeros((1, 2, 8), np.float32), np.array([8], np.uint8), np.array([False]), np.zeros(2), np.zeros(2))
    with pytest.raises(ValueError, match="layout"):
        kb.decode(
            np.zeros(3, np.uint8),
            np.array([4], np.uint8),
            np.array([False]),
            np.zeros(1, np.float16),
            np.zeros(1, np.float16),
            np.zeros((1, 8, 64), np.uint16),
        )


def test_fastest_keeps_the_faster_implementation(monkeypatch):
    import time

    from kernels_numba import _device

    monkeypatch.setenv("LOCALSYM_DEVICE", "auto")
    monkeypatch.setattr(_device, "device", lambda: "cuda")
    _device._CHOSEN.clear()
    slow = lambda v: (time.sleep(0.01), v)[1]  # noqa: E731
    fast = lambda v: v  # noqa: E731
    assert _device.fastest("k", (1,), slow, fast)(7) == 7
    assert _device.fastest("k", (1,), slow, fast) is fast
    assert _device.fastest("k", (1,), fast, slow)(3) == 3  # the shape's choice stands
    _device._CHOSEN.clear()
