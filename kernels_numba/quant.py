"""Group-wise asymmetric quantization of 2-D float arrays, 2 to 8 bits, packed.

Groups run along the last axis: pass K transposed (channels as rows) for KIVI's
per-channel K, and V as is (tokens as rows) for per-token V. Each group of ``group``
values keeps an f16 minimum and an f16 step; codes are ``bits`` wide, packed as a
little-endian bit stream, ``group * bits / 8`` bytes per group.

Codes and values are computed in float64, where (x - zero) * inv + 0.5 and zero + code *
scale are exact before the final rounding: the CPU and a GPU (which fuses multiply-adds)
then agree bit for bit.

Every kernel comes three ways with one signature: a numpy reference (``*_ref``), a Numba
CPU version (``*_cpu``), and a Numba-CUDA version (``*_cuda``); ``group_minmax``,
``encode`` and ``decode`` pick one by ``LOCALSYM_DEVICE``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, njit, prange

from kernels_numba._device import device, serialized

BITS = (2, 3, 4, 8)


def check_args(x: np.ndarray, bits: int, group: int) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        raise ValueError("expected a 2-D numpy array")
    if x.dtype != np.float32:
        raise ValueError(f"expected float32, got {x.dtype}")
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    if group <= 0 or group % 8:
        raise ValueError(f"group must be a positive multiple of 8, not {group}")


def n_groups(cols: int, group: int) -> int:
    return (cols + group - 1) // group


def packed_cols(cols: int, bits: int, group: int) -> int:
    return n_groups(cols, group) * group * bits // 8


# ---- numpy reference ------------------------------------------------------------------


def group_minmax_ref(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = x.shape
    g = n_groups(cols, group)
    pad = np.full((rows, g * group), np.nan, np.float32)
    pad[:, :cols] = x
    v = pad.reshape(rows, g, group)
    return np.nanmin(v, axis=2), np.nanmax(v, axis=2)


def encode_ref(x: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    rows, cols = x.shape
    g = n_groups(cols, group)
    zs = np.repeat(zero, group, axis=1)[:, :cols]
    ss = np.repeat(scale, group, axis=1)[:, :cols]
    inv = np.where(ss > 0, np.float32(1.0) / np.where(ss > 0, ss, np.float32(1)), 0).astype(np.float32)
    q = np.floor((x.astype(np.float64) - zs) * inv.astype(np.float64) + 0.5)
    codes = np.zeros((rows, g * group), np.uint32)
    codes[:, :cols] = np.clip(q, 0, (1 << bits) - 1).astype(np.uint32)
    # little-endian bit stream: value i occupies bits [i*bits, (i+1)*bits)
    bitpos = np.arange(bits, dtype=np.uint32)
    stream = ((codes[:, :, None] >> bitpos) & 1).astype(np.uint8).reshape(rows, -1)
    return np.packbits(stream, axis=1, bitorder="little")


def decode_ref(packed: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int, cols: int) -> np.ndarray:
    rows = packed.shape[0]
    stream = np.unpackbits(packed, axis=1, bitorder="little").reshape(rows, -1, bits)
    codes = (stream.astype(np.uint32) << np.arange(bits, dtype=np.uint32)).sum(axis=2)[:, :cols]
    zs = np.repeat(zero, group, axis=1)[:, :cols]
    ss = np.repeat(scale, group, axis=1)[:, :cols]
    return (zs.astype(np.float64) + codes.astype(np.float64) * ss).astype(np.float32)


# ---- Numba CPU -------------------------------------------------------------------------


@serialized
@njit(parallel=True, cache=True)
def group_minmax_cpu(x, group):
    rows, cols = x.shape
    g = (cols + group - 1) // group
    lo = np.empty((rows, g), np.float32)
    hi = np.empty((rows, g), np.float32)
    for r in prange(rows):
        for j in range(g):
            a = x[r, j * group]
            b = a
            for c in range(j * group + 1, min(cols, (j + 1) * group)):
                v = x[r, c]
                if v < a:
                    a = v
                if v > b:
                    b = v
            lo[r, j] = a
            hi[r, j] = b
    return lo, hi


@serialized
@njit(parallel=True, cache=True)
def encode_cpu(x, zero, scale, bits, group):
    rows, cols = x.shape
    g = (cols + group - 1) // group
    gb = group * bits // 8
    out = np.zeros((rows, g * gb), np.uint8)
    top = (1 << bits) - 1
    for r in prange(rows):
        codes = np.zeros(group, np.uint32)
        for j in range(g):
            s = scale[r, j]
            z = zero[r, j]
            inv = np.float32(1.0) / s if s > 0 else np.float32(0.0)
            o = j * group
            n = min(cols, o + group) - o
            for i in range(n):
                q = math.floor((np.float64(x[r, o + i]) - np.float64(z)) * np.float64(inv) + 0.5)
                codes[i] = 0 if q < 0 else (top if q > top else q)
            for i in range(n, group):
                codes[i] = 0
            p = j * gb
            if bits == 8:
                for i in range(group):
                    out[r, p + i] = codes[i]
            elif bits == 4:
                for i in range(gb):
                    out[r, p + i] = codes[2 * i] | (codes[2 * i + 1] << 4)
            elif bits == 2:
                for i in range(gb):
                    out[r, p + i] = (
                        codes[4 * i] | (codes[4 * i + 1] << 2) | (codes[4 * i + 2] << 4) | (codes[4 * i + 3] << 6)
                    )
            else:  # 3 bits: 8 values in every 3 bytes
                for i in range(group // 8):
                    w = np.uint32(0)
                    for t in range(8):
                        w |= codes[8 * i + t] << (3 * t)
                    out[r, p + 3 * i] = w & 0xFF
                    out[r, p + 3 * i + 1] = (w >> 8) & 0xFF
                    out[r, p + 3 * i + 2] = (w >> 16) & 0xFF
    return out


@serialized
@njit(parallel=True, cache=True)
def decode_cpu(packed, zero, scale, bits, group, cols):
    # Groups are byte-aligned (group % 8 == 0), so each branch walks whole bytes with fixed
    # shifts, which LLVM vectorizes; the padding of a ragged last group is decoded too and
    # cut off by the returned view.
    rows = packed.shape[0]
    g = (cols + group - 1) // group
    out = np.empty((rows, g * group), np.float32)
    gb = group * bits // 8  # bytes per group
    for r in prange(rows):
        for j in range(g):
            z = np.float64(zero[r, j])
            s = np.float64(scale[r, j])
            o = j * group
            p = j * gb
            if bits == 8:
                for i in range(group):
                    out[r, o + i] = z + np.float64(packed[r, p + i]) * s
            elif bits == 4:
                for i in range(gb):
                    b = packed[r, p + i]
                    out[r, o + 2 * i] = z + np.float64(b & 15) * s
                    out[r, o + 2 * i + 1] = z + np.float64(b >> 4) * s
            elif bits == 2:
                for i in range(gb):
                    b = packed[r, p + i]
                    out[r, o + 4 * i] = z + np.float64(b & 3) * s
                    out[r, o + 4 * i + 1] = z + np.float64((b >> 2) & 3) * s
                    out[r, o + 4 * i + 2] = z + np.float64((b >> 4) & 3) * s
                    out[r, o + 4 * i + 3] = z + np.float64(b >> 6) * s
            else:  # 3 bits: 8 values in every 3 bytes
                for i in range(group // 8):
                    w = (
                        np.uint32(packed[r, p + 3 * i])
                        | (np.uint32(packed[r, p + 3 * i + 1]) << 8)
                        | (np.uint32(packed[r, p + 3 * i + 2]) << 16)
                    )
                    for t in range(8):
                        out[r, o + 8 * i + t] = z + np.float64((w >> (3 * t)) & 7) * s
    return out[:, :cols]


# ---- Numba CUDA ------------------------------------------------------------------------


@cuda.jit
def _minmax_kernel(x, group, lo, hi):
    r, j = cuda.grid(2)  # type: ignore[call-arg, var-annotated]
    rows, cols = x.shape
    if r < rows and j < lo.shape[1]:
        a = x[r, j * group]
        b = a
        for c in range(j * group + 1, min(cols, (j + 1) * group)):
            v = x[r, c]
            a = min(a, v)
            b = max(b, v)
        lo[r, j] = a
        hi[r, j] = b


@cuda.jit
def _encode_kernel(x, zero, scale, bits, group, out):
    # one thread per output byte: it gathers the codes that touch it, so no atomics
    r, byte = cuda.grid(2)  # type: ignore[call-arg, var-annotated]
    rows, cols = x.shape
    if r < rows and byte < out.shape[1]:
        top = (1 << bits) - 1
        acc = 0
        c0 = (byte * 8) // bits
        c1 = min(cols, ((byte + 1) * 8 + bits - 1) // bits)
        for c in range(c0, c1):
            j = c // group
            s = scale[r, j]
            inv = np.float32(1.0) / s if s > 0 else np.float32(0.0)
            q = int(math.floor((np.float64(x[r, c]) - np.float64(zero[r, j])) * np.float64(inv) + 0.5))
            q = 0 if q < 0 else (top if q > top else q)
            off = c * bits - byte * 8
            if off >= 0:
                acc |= (q << off) & 0xFF
            else:
                acc |= (q >> (-off)) & 0xFF
        out[r, byte] = acc


@cuda.jit
def _decode_kernel(packed, zero, scale, bits, group, out):
    r, c = cuda.grid(2)  # type: ignore[call-arg, var-annotated]
    rows, cols = out.shape
    if r < rows and c < cols:
        bit = c * bits
        byte = bit >> 3
        shift = bit & 7
        v = int(packed[r, byte]) >> shift
        if shift + bits > 8:
            v |= int(packed[r, byte + 1]) << (8 - shift)
        j = c // group
        out[r, c] = np.float64(zero[r, j]) + np.float64(v & ((1 << bits) - 1)) * np.float64(scale[r, j])


def _grid(rows: int, cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    tpb = (4, 64)
    return ((rows + tpb[0] - 1) // tpb[0], (cols + tpb[1] - 1) // tpb[1]), tpb


def group_minmax_cuda(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = x.shape
    g = n_groups(cols, group)
    lo = cuda.device_array((rows, g), np.float32)
    hi = cuda.device_array((rows, g), np.float32)
    blocks, tpb = _grid(rows, g)
    _minmax_kernel[blocks, tpb](cuda.to_device(x), group, lo, hi)
    return lo.copy_to_host(), hi.copy_to_host()


def encode_cuda(x: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    rows, cols = x.shape
    out = cuda.device_array((rows, packed_cols(cols, bits, group)), np.uint8)
    blocks, tpb = _grid(rows, out.shape[1])
    _encode_kernel[blocks, tpb](cuda.to_device(x), cuda.to_device(zero), cuda.to_device(scale), bits, group, out)
    return out.copy_to_host()


def decode_cuda(
    packed: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int, cols: int
) -> np.ndarray:
    rows = packed.shape[0]
    out = cuda.device_array((rows, cols), np.float32)
    blocks, tpb = _grid(rows, cols)
    _decode_kernel[blocks, tpb](cuda.to_device(packed), cuda.to_device(zero), cuda.to_device(scale), bits, group, out)
    return out.copy_to_host()


# ---- dispatch --------------------------------------------------------------------------


def group_minmax(x: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray]:
    check_args(x, 8, group)
    x = np.ascontiguousarray(x)
    return group_minmax_cuda(x, group) if device() == "cuda" else group_minmax_cpu(x, group)


def encode(x: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    check_args(x, bits, group)
    g = n_groups(x.shape[1], group)
    for name, a in (("zero", zero), ("scale", scale)):
        if a.shape != (x.shape[0], g) or a.dtype != np.float32:
            raise ValueError(f"{name} must be float32 of shape {(x.shape[0], g)}")
    args = (np.ascontiguousarray(x), np.ascontiguousarray(zero), np.ascontiguousarray(scale), bits, group)
    return encode_cuda(*args) if device() == "cuda" else encode_cpu(*args)


def decode(packed: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int, cols: int) -> np.ndarray:
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, not {bits}")
    if group <= 0 or group % 8:
        raise ValueError(f"group must be a positive multiple of 8, not {group}")
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != packed_cols(cols, bits, group):
        raise ValueError(f"packed must be uint8 of shape (rows, {packed_cols(cols, bits, group)})")
    g = n_groups(cols, group)
    for name, a in (("zero", zero), ("scale", scale)):
        if a.shape != (packed.shape[0], g) or a.dtype != np.float32:
            raise ValueError(f"{name} must be float32 of shape {(packed.shape[0], g)}")
    args = (np.ascontiguousarray(packed), np.ascontiguousarray(zero), np.ascontiguousarray(scale), bits, group, cols)
    return decode_cuda(*args) if device() == "cuda" else decode_cpu(*args)
