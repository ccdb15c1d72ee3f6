"""FHRR kernels: every version against the numpy reference; the algebra they rest on."""

import numpy as np
import pytest

from kernels_numba import fhrr


def _tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, 49152, n).astype(np.int64)


def test_phases_parity():
    t = _tokens(7)
    ref = fhrr.phases_ref(t, 64, 3)
    assert ref.min() >= 0 and ref.max() < 2 * np.pi
    assert np.array_equal(fhrr.phases_cpu(t, 64, 3), ref)
    assert np.array_equal(fhrr.phases_cuda(t, 64, 3), ref)
    assert not np.array_equal(fhrr.phases_ref(t, 64, 4), ref)  # the seed matters


def test_sketch_parity():
    t = _tokens(9, 1)
    w = np.random.default_rng(2).random(9).astype(np.float32)
    ref = fhrr.sketch_ref(t, w, 64, 5)
    assert np.allclose(fhrr.sketch_cpu(t, w, 64, 5), ref, atol=1e-4)
    assert np.allclose(fhrr.sketch_cuda(t, w, 64, 5), ref, atol=1e-4)


def test_score_and_lsh_parity():
    rng = np.random.default_rng(3)
    m = fhrr.as_unit_real((rng.standard_normal((20, 32)) + 1j * rng.standard_normal((20, 32))).astype(np.complex64))
    q = m[4]
    ref = fhrr.score_ref(m, q)
    assert np.allclose(fhrr.score_cpu(m, q), ref, atol=1e-5)
    assert np.allclose(fhrr.score_cuda(m, q), ref, atol=1e-5)
    assert int(np.argmax(ref)) == 4 and abs(ref[4] - 1) < 1e-5
    planes = rng.standard_normal((3 * 6, 64)).astype(np.float32)
    codes = fhrr.lsh_codes_ref(m, planes, 6)
    assert codes.shape == (20, 3) and codes.max() < 64
    assert np.array_equal(fhrr.lsh_codes_cpu(m, planes, 6), codes)
    assert np.array_equal(fhrr.lsh_codes_cuda(m, planes, 6), codes)


def test_bind_unbind_and_capacity_about_d_over_32():
    """A trace of key-value pairs: bind (phases add), bundle (sum), unbind with the key's
    conjugate, clean up by the nearest codebook vector. D=1024 holds ~32 pairs exactly,
    and fails well before 512: sketches locate, the pointer index recovers."""
    D = 1024
    vocab = np.arange(4096, dtype=np.int64)
    book = np.exp(1j * fhrr.phases_ref(vocab, D, 9))

    def accuracy(n_pairs):
        rng = np.random.default_rng(n_pairs)
        keys = rng.choice(4096, n_pairs, replace=False)
        vals = rng.choice(4096, n_pairs)
        trace = (book[keys] * book[vals]).sum(axis=0)  # bundle of bound pairs
        unbound = trace[None, :] * np.conj(book[keys])  # unbind each key
        cleaned = np.argmax((unbound @ np.conj(book).T).real, axis=1)  # nearest codebook entry
        return float(np.mean(cleaned == vals))

    assert accuracy(32) >= 0.95
    assert accuracy(512) < 0.8


def test_sketch_locates_the_block_a_query_comes_from():
    rng = np.random.default_rng(4)
    blocks = [rng.integers(0, 49152, 128).astype(np.int64) for _ in range(100)]
    m = np.stack([fhrr.as_unit_real(fhrr.sketch(b, np.ones(128, np.float32), 512)) for b in blocks])
    for i in (3, 50, 97):
        q = blocks[i][40:46]
        s = fhrr.score(m, fhrr.as_unit_real(fhrr.sketch(q, np.ones(6, np.float32), 512)))
        assert int(np.argmax(s)) == i


def test_bad_input_is_a_value_error():
    with pytest.raises(ValueError, match="int64"):
        fhrr.sketch(np.zeros(3, np.int32), np.ones(3, np.float32), 64)
    with pytest.raises(ValueError, match="weights"):
        fhrr.sketch(np.zeros(3, np.int64), np.ones(4, np.float32), 64)
    with pytest.raises(ValueError, match="multiple of 32"):
        fhrr.phases(np.zeros(3, np.int64), 100)
    with pytest.raises(ValueError, match="float32"):
        fhrr.score(np.zeros((2, 4)), np.zeros(4))
    with pytest.raises(ValueError, match="divide"):
        fhrr.lsh_codes(np.zeros((2, 4), np.float32), np.zeros((5, 4), np.float32), 2)
