"""The one-pass seal (measure, choose, encode): every version against the numpy reference."""

import numpy as np
import pytest

from kernels_numba import kv_block as kb
from kernels_numba import kv_seal as ks

ALL = np.array([2, 3, 4, 8, 16], np.uint8)
CAL = (1.46, 1.93)


def _block(shape, seed, outliers=True):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * rng.uniform(0.2, 3, (shape[0], 1, 1))
    if outliers:  # a few loud channels, as real keys have
        x[:, :, rng.choice(shape[2], 3, replace=False)] *= 12
    return x.astype(np.float16).view(np.uint16)


def _between(errors):
    """A threshold halfway into the widest gap among the finite estimates: the choice then
    does not hang on rounding differences between versions."""
    v = np.unique(errors[np.isfinite(errors) & (errors > 0)])
    k = int(np.argmax(np.diff(np.log(v))))
    return float(np.sqrt(v[k] * v[k + 1]))


def _same(a, b):
    assert np.array_equal(a.bits, b.bits)
    assert np.array_equal(a.per_channel, b.per_channel)
    assert np.array_equal(a.codes, b.codes)
    assert np.array_equal(a.zero.view(np.uint16), b.zero.view(np.uint16))
    assert np.array_equal(a.scale.view(np.uint16), b.scale.view(np.uint16))
    assert np.array_equal(np.isfinite(a.errors), np.isfinite(b.errors))
    fin = np.isfinite(a.errors)
    assert np.allclose(a.errors[fin], b.errors[fin], rtol=1e-4)


@pytest.mark.parametrize("shape", [(3, 70, 128), (4, 40, 192), (2, 33, 96)])
@pytest.mark.parametrize("key", [True, False])
def test_adaptive_seal_matches_the_reference(shape, key):
    heads = 2 if shape[2] % 64 == 0 else 3
    x = _block(shape, 7)
    probe = ks.seal_ref(x, np.array([2, 3, 8, 16], np.uint8), False, 1.0, key, heads, CAL)
    thr = _between(probe.errors)
    for allowed in ([2, 3, 4, 8, 16], [3, 4, 16], [8, 16], [2, 3, 8, 16]):
        allowed = np.array(allowed, np.uint8)
        ref = ks.seal_ref(x, allowed, False, thr, key, heads, CAL)
        for impl in (ks.seal_cpu, ks.seal_cuda):
            _same(impl(x, allowed, False, thr, key, heads, CAL), ref)
    # the same codes as encoding with the chosen formats directly
    ref = ks.seal_ref(x, ALL, False, _between(probe.errors), key, heads, CAL)
    assert np.array_equal(kb.encode_ref(x, ref.bits, ref.per_channel, ref.zero, ref.scale), ref.codes)


@pytest.mark.parametrize("key", [True, False])
@pytest.mark.parametrize("fmt", [2, 3, 4, 8, 16])
def test_fixed_formats_and_strided_views(key, fmt):
    base = _block((3, 48, 256), 3)
    x = base[:, ::2, :]  # cells at a stride, as a blob's layers sit
    one = np.array([fmt], np.uint8)
    ref = ks.seal_ref(x, one, True, 0.0, key, 4, CAL)
    assert (ref.bits == fmt).all() and (ref.per_channel == (key and fmt in (2, 3, 4))).all()
    for impl in (ks.seal_cpu, ks.seal_cuda):
        _same(impl(x, one, True, 0.0, key, 4, CAL), ref)
    out = np.zeros_like(x)
    kb.decode_cpu(ref.codes, ref.bits, ref.per_channel, ref.zero, ref.scale, out)
    if fmt == 16:
        assert np.array_equal(out, x)


def test_thresholds_pick_cheap_or_exact_formats():
    x = _block((2, 64, 128), 1)
    loose = ks.seal_cpu(x, ALL, False, 1e9, True, 2, CAL)
    assert (loose.bits == 2).all() and loose.per_channel.all()
    strict = ks.seal_cpu(x, ALL, False, 0.0, False, 2, CAL)
    assert (strict.bits == 16).all() and np.isfinite(strict.errors).all()
    # K's Q8 estimate is made only where the Q4 one fails
    k = ks.seal_cpu(x, ALL, False, 0.0, True, 2, CAL)
    assert np.isfinite(k.errors[:, 3]).all() and (k.bits == 16).all()
    k = ks.seal_cpu(x, ALL, False, 1e9, True, 2, CAL)
    assert np.isinf(k.errors[:, 3]).all()


def test_bad_arguments_are_clear():
    x = _block((1, 8, 64), 0)
    with pytest.raises(ValueError, match="allowed"):
        ks.seal_cpu(x, np.array([5], np.uint8), False, 1.0, False)
    with pytest.raises(ValueError, match="heads"):
        ks.seal_cpu(x, ALL, False, 1.0, True, 3)
    with pytest.raises(ValueError, match="uint16"):
        ks.seal_cpu(x.view(np.int16), ALL, False, 1.0, False)
