"""FHRR holographic sketches: phasor codebooks from a hash, bundling, scoring, LSH.

Every token id maps to a fixed random phasor vector (unit complex numbers) whose phases
come from a hash of (seed, token, dimension), so no codebook is stored. Bind is the
elementwise complex product (phases add); order is encoded by permuting (rolling) the
second token of a bigram before binding; bundle is a weighted sum. A sketch locates
content: it holds only about D/32 exact pairs, so it never recovers it.

Three versions of each kernel with one signature: ``*_ref`` (numpy), ``*_cpu`` (Numba),
``*_cuda`` (Numba-CUDA); the plain names dispatch on ``LOCALSYM_DEVICE``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, njit, prange

from kernels_numba._device import device, serialized

_GOLD = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI_24 = np.float32(2 * math.pi / (1 << 24))


def _check_tokens(tokens: np.ndarray, weights: np.ndarray | None = None) -> None:
    if not isinstance(tokens, np.ndarray) or tokens.ndim != 1 or tokens.dtype != np.int64:
        raise ValueError("tokens must be a 1-D int64 array")
    if weights is not None and (weights.shape != tokens.shape or weights.dtype != np.float32):
        raise ValueError("weights must be float32 with the tokens' shape")


def _check_dim(dim: int) -> None:
    if dim <= 0 or dim % 32:
        raise ValueError(f"dim must be a positive multiple of 32, not {dim}")


# ---- numpy reference ---------------------------------------------------------------------


def phases_ref(tokens: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """[n, dim] float32 phases in [0, 2pi): splitmix64 of (seed, token, d), top 24 bits."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + tokens.astype(np.uint64)[:, None] * _GOLD + np.arange(dim, dtype=np.uint64)[None, :] * _M2
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(40)).astype(np.float32) * _TWO_PI_24


def sketch_ref(tokens: np.ndarray, weights: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """Bundle of weighted unigrams and order-bound bigrams -> complex64 [dim]."""
    th = phases_ref(tokens, dim, seed)
    s = (weights[:, None] * np.exp(1j * th)).sum(axis=0)
    if len(tokens) > 1:
        w2 = np.sqrt(weights[:-1] * weights[1:])
        bound = th[:-1] + np.roll(th[1:], 1, axis=1)  # bind(a, permute(b))
        s = s + (w2[:, None] * np.exp(1j * bound)).sum(axis=0)
    return s.astype(np.complex64)


def score_ref(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Rows of unit-norm real views [N, 2D] dotted with a unit query [2D]: Re<s, q>."""
    return (matrix @ query).astype(np.float32)


def lsh_codes_ref(vectors: np.ndarray, planes: np.ndarray, bits: int) -> np.ndarray:
    """Sign random projections -> [N, tables] uint32 codes of ``bits`` bits each."""
    proj = vectors @ planes.T  # [N, tables * bits]
    b = (proj > 0).astype(np.uint32).reshape(len(vectors), -1, bits)
    return (b << np.arange(bits, dtype=np.uint32)).sum(axis=2).astype(np.uint32)


# ---- Numba CPU -----------------------------------------------------------------------------


@njit(cache=True, inline="always")
def _phase(seed, token, d):
    x = (
        np.uint64(seed)
        + np.uint64(token) * np.uint64(0x9E3779B97F4A7C15)
        + np.uint64(d) * np.uint64(0x94D049BB133111EB)
    )
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.float32(x >> np.uint64(40)) * np.float32(2 * math.pi / (1 << 24))


@serialized
@njit(parallel=True, cache=True)
def phases_cpu(tokens, dim, seed):
    n = tokens.shape[0]
    out = np.empty((n, dim), np.float32)
    for i in prange(n):
        for d in range(dim):
            out[i, d] = _phase(seed, tokens[i], d)
    return out


@serialized
@njit(parallel=True, cache=True)
def sketch_cpu(tokens, weights, dim, seed):
    n = tokens.shape[0]
    re = np.zeros(dim, np.float64)
    im = np.zeros(dim, np.float64)
    for d in prange(dim):
        dp = (d - 1) % dim  # np.roll(th, 1)[d] == th[d - 1]
        acc_r = 0.0
        acc_i = 0.0
        for i in range(n):
            a = _phase(seed, tokens[i], d)
            acc_r += weights[i] * math.cos(a)
            acc_i += weights[i] * math.sin(a)
            if i + 1 < n:
                b = a + _phase(seed, tokens[i + 1], dp)
                w2 = math.sqrt(weights[i] * weights[i + 1])
                acc_r += w2 * math.cos(b)
                acc_i += w2 * math.sin(b)
        re[d] = acc_r
        im[d] = acc_i
    out = np.empty(dim, np.complex64)
    for d in range(dim):
        out[d] = complex(re[d], im[d])
    return out


@serialized
@njit(parallel=True, cache=True)
def score_cpu(matrix, query):
    n, m = matrix.shape
    out = np.empty(n, np.float32)
    for i in prange(n):
        acc = np.float32(0.0)
        for j in range(m):
            acc += matrix[i, j] * query[j]
        out[i] = acc
    return out


@serialized
@njit(parallel=True, cache=True)
def lsh_codes_cpu(vectors, planes, bits):
    n, m = vectors.shape
    tables = planes.shape[0] // bits
    out = np.zeros((n, tables), np.uint32)
    for i in prange(n):
        for t in range(tables):
            code = np.uint32(0)
            for b in range(bits):
                p = t * bits + b
                acc = np.float32(0.0)
                for j in range(m):
                    acc += vectors[i, j] * planes[p, j]
                if acc > 0:
                    code |= np.uint32(1) << np.uint32(b)
            out[i, t] = code
    return out


# ---- Numba CUDA ----------------------------------------------------------------------------


@cuda.jit(device=True, inline=True)
def _phase_dev(seed, token, d):
    x = (
        np.uint64(seed)
        + np.uint64(token) * np.uint64(0x9E3779B97F4A7C15)
        + np.uint64(d) * np.uint64(0x94D049BB133111EB)
    )
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x = x ^ (x >> np.uint64(31))
    return np.float32(x >> np.uint64(40)) * np.float32(2 * math.pi / (1 << 24))


@cuda.jit
def _phases_kernel(tokens, dim, seed, out):
    i, d = cuda.grid(2)  # type: ignore[call-arg, var-annotated]
    if i < tokens.shape[0] and d < dim:
        out[i, d] = _phase_dev(seed, tokens[i], d)


@cuda.jit
def _sketch_kernel(tokens, weights, dim, seed, re, im):
    d = cuda.grid(1)  # type: ignore[call-arg, var-annotated]
    if d < dim:
        n = tokens.shape[0]
        dp = (d - 1 + dim) % dim
        acc_r = 0.0
        acc_i = 0.0
        for i in range(n):
            a = _phase_dev(seed, tokens[i], d)
            acc_r += weights[i] * math.cos(a)
            acc_i += weights[i] * math.sin(a)
            if i + 1 < n:
                b = a + _phase_dev(seed, tokens[i + 1], dp)
                w2 = math.sqrt(weights[i] * weights[i + 1])
                acc_r += w2 * math.cos(b)
                acc_i += w2 * math.sin(b)
        re[d] = acc_r
        im[d] = acc_i


@cuda.jit
def _score_kernel(matrix, query, out):
    i = cuda.grid(1)  # type: ignore[call-arg, var-annotated]
    if i < matrix.shape[0]:
        acc = np.float32(0.0)
        for j in range(matrix.shape[1]):
            acc += matrix[i, j] * query[j]
        out[i] = acc


@cuda.jit
def _lsh_kernel(vectors, planes, bits, out):
    i, t = cuda.grid(2)  # type: ignore[call-arg, var-annotated]
    if i < vectors.shape[0] and t < out.shape[1]:
        code = 0
        for b in range(bits):
            p = t * bits + b
            acc = np.float32(0.0)
            for j in range(vectors.shape[1]):
                acc += vectors[i, j] * planes[p, j]
            if acc > 0:
                code |= 1 << b
        out[i, t] = code


def phases_cuda(tokens: np.ndarray, dim: int, seed: int) -> np.ndarray:
    out = cuda.device_array((len(tokens), dim), np.float32)
    tpb = (4, 64)
    _phases_kernel[((len(tokens) + 3) // 4, (dim + 63) // 64), tpb](cuda.to_device(tokens), dim, seed, out)
    return out.copy_to_host()


def sketch_cuda(tokens: np.ndarray, weights: np.ndarray, dim: int, seed: int) -> np.ndarray:
    re = cuda.device_array(dim, np.float64)
    im = cuda.device_array(dim, np.float64)
    _sketch_kernel[(dim + 127) // 128, 128](cuda.to_device(tokens), cuda.to_device(weights), dim, seed, re, im)
    return (re.copy_to_host() + 1j * im.copy_to_host()).astype(np.complex64)


def score_cuda(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    out = cuda.device_array(matrix.shape[0], np.float32)
    _score_kernel[(matrix.shape[0] + 127) // 128, 128](cuda.to_device(matrix), cuda.to_device(query), out)
    return out.copy_to_host()


def lsh_codes_cuda(vectors: np.ndarray, planes: np.ndarray, bits: int) -> np.ndarray:
    tables = planes.shape[0] // bits
    out = cuda.device_array((len(vectors), tables), np.uint32)
    _lsh_kernel[((len(vectors) + 31) // 32, (tables + 3) // 4), (32, 4)](
        cuda.to_device(vectors), cuda.to_device(planes), bits, out
    )
    return out.copy_to_host()


# ---- dispatch --------------------------------------------------------------------------------


def phases(tokens: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    _check_tokens(tokens)
    _check_dim(dim)
    return phases_cuda(tokens, dim, seed) if device() == "cuda" else phases_cpu(tokens, dim, seed)


def sketch(tokens: np.ndarray, weights: np.ndarray, dim: int, seed: int = 0) -> np.ndarray:
    _check_tokens(tokens, weights)
    _check_dim(dim)
    if len(tokens) == 0:
        return np.zeros(dim, np.complex64)
    return sketch_cuda(tokens, weights, dim, seed) if device() == "cuda" else sketch_cpu(tokens, weights, dim, seed)


def as_unit_real(sketches: np.ndarray) -> np.ndarray:
    """complex [N, D] or [D] -> float32 [N, 2D] / [2D] rows of unit norm (for scoring)."""
    s = np.atleast_2d(sketches)
    v = np.concatenate([s.real, s.imag], axis=1).astype(np.float32)
    v /= np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    return v if sketches.ndim == 2 else v[0]


def score(matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    if matrix.ndim != 2 or query.ndim != 1 or matrix.shape[1] != query.shape[0]:
        raise ValueError("matrix must be [N, M] and query [M]")
    if matrix.dtype != np.float32 or query.dtype != np.float32:
        raise ValueError("matrix and query must be float32")
    if device() == "cuda":
        return score_cuda(matrix, query)
    return score_ref(matrix, query)  # BLAS sgemv beats a hand loop on the CPU


def lsh_codes(vectors: np.ndarray, planes: np.ndarray, bits: int) -> np.ndarray:
    if vectors.ndim != 2 or planes.ndim != 2 or vectors.shape[1] != planes.shape[1]:
        raise ValueError("vectors must be [N, M] and planes [tables * bits, M]")
    if not 1 <= bits <= 32 or planes.shape[0] % bits:
        raise ValueError("bits must be in 1..32 and divide the number of planes")
    if vectors.dtype != np.float32 or planes.dtype != np.float32:
        raise ValueError("vectors and planes must be float32")
    return lsh_codes_cuda(vectors, planes, bits) if device() == "cuda" else lsh_codes_cpu(vectors, planes, bits)
