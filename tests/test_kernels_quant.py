"""Quantization kernels: every version against the numpy reference; clear errors."""

import numpy as np
import pytest

from kernels_numba import quant as q

SHAPES = [(5, 70), (3, 64), (1, 8)]  # ragged last groups included; small for the CUDA simulator


def _params(x, bits, group):
    lo, hi = q.group_minmax_ref(x, group)
    zero = lo.astype(np.float16).astype(np.float32)
    scale = ((hi - zero) / ((1 << bits) - 1)).astype(np.float16).astype(np.float32)
    return zero, scale


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [8, 32])
def test_minmax_parity(shape, group):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    ref = q.group_minmax_ref(x, group)
    for impl in (q.group_minmax_cpu, q.group_minmax_cuda):
        got = impl(x, group)
        assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])


@pytest.mark.parametrize("bits", q.BITS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("group", [8, 32])
def test_encode_decode_parity_and_error_bound(bits, shape, group):
    x = (np.random.default_rng(bits).standard_normal(shape) * 3).astype(np.float32)
    zero, scale = _params(x, bits, group)
    ref = q.encode_ref(x, zero, scale, bits, group)
    assert ref.shape == (shape[0], q.packed_cols(shape[1], bits, group))
    for impl in (q.encode_cpu, q.encode_cuda):
        assert np.array_equal(impl(x, zero, scale, bits, group), ref), impl.__name__
    dref = q.decode_ref(ref, zero, scale, bits, group, shape[1])
    for impl in (q.decode_cpu, q.decode_cuda):
        assert np.array_equal(impl(ref, zero, scale, bits, group, shape[1]), dref), impl.__name__
    # each value lands within half a step of where it was (plus f16 rounding of the min)
    step = np.repeat(scale, group, axis=1)[:, : shape[1]]
    assert np.all(np.abs(dref - x) <= step / 2 + 1e-2 * (np.abs(x) + 1))


def test_dispatcher_uses_the_chosen_device(monkeypatch):
    """Bit-identical on both devices, at a size where rounding ties do occur."""
    x = np.random.default_rng(3).standard_normal((64, 200)).astype(np.float32)
    out = {}
    for dev in ("cpu", "cuda"):
        monkeypatch.setenv("LOCALSYM_DEVICE", dev)
        zero, scale = q.group_minmax(x, 8)
        scale = ((scale - zero) / 15).astype(np.float32)
        out[dev] = q.decode(q.encode(x, zero, scale, 4, 8), zero, scale, 4, 8, 200)
    assert np.array_equal(out["cpu"], out["cuda"])
    monkeypatch.setenv("LOCALSYM_DEVICE", "tpu")
    with pytest.raises(ValueError, match="LOCALSYM_DEVICE"):
        q.group_minmax(x, 8)


def test_bad_input_is_a_value_error():
    x = np.zeros((4, 32), np.float32)
    z = np.zeros((4, 1), np.float32)
    with pytest.raises(ValueError, match="float32"):
        q.encode(x.astype(np.float64), z, z, 4, 32)
    with pytest.raises(ValueError, match="2-D"):
        q.group_minmax(np.zeros(8, np.float32), 8)
    with pytest.raises(ValueError, match="bits"):
        q.encode(x, z, z, 5, 32)
    with pytest.raises(ValueError, match="group"):
        q.encode(x, z, z, 4, 12)
    with pytest.raises(ValueError, match="zero"):
        q.encode(x, np.zeros((4, 2), np.float32), z, 4, 32)
    with pytest.raises(ValueError, match="packed"):
        q.decode(np.zeros((4, 3), np.uint8), z, z, 4, 32, 32)
    with pytest.raises(ValueError, match="packed"):
        q.decode(np.zeros((4, 16), np.int8), z, z, 4, 32, 32)
