"""One block's KV, every layer in one call: group ranges, encode, decode.

A sealed block holds K and V as [layers, cells, width] f16, strided views into llama.cpp's
state blob. Quantizing layer by layer and format by format cost hundreds of small calls per
block (each a device launch under CUDA); here one call encodes every layer in its own
format and one decodes every layer straight into the state blob being built for a restore.
On the CPU the group ranges are measured inside the seal (``kv_seal``, which inlines
``encode_layer``); the reference and CUDA versions of ``ranges`` serve its other versions.

A layer's format is its ``bits``: 16 keeps the f16 values; 8, 4, 3 and 2 are group-wise
asymmetric codes (an f16 minimum and step per group, values packed little-endian: value i
of a group occupies bits [i*bits, (i+1)*bits), as in ``kernels_numba.quant``).

Per-token layers group along channels (GROUP_TOKEN values a group: V always, K at 8 bits):
a cell's groups one after another, cells one after another; parameters [cells, groups].
Per-channel layers group along cells (GROUP_CHANNEL cells a group: K at 4/3/2 bits, as KIVI
does), laid out so that every loop runs along the channels of a cell: parameters
[groups, width], and a group's codes as ``group * bits / 8`` planes of ``width`` bytes,
plane k holding byte k of every channel's packed group (layout v2; v1 stored each channel's
groups together, which made both directions a transpose).

f16 data travels as uint16 bit patterns, since numba's CPU target has no float16: a table
widens them, and an exact round-to-nearest-even narrows float32 back. Codes are computed in
float32 with every operation rounded on its own (the CUDA kernel says so explicitly: NVVM
would fuse the multiply-add), so all three versions give the same codes; values decode in
float32 (``z + code * step`` is exact before its final rounding, so a fused multiply-add
gives the same bits).

Versions with one signature: ``*_ref`` (numpy), ``*_cpu`` (Numba, one parallel call over
every layer) and ``*_cuda`` (Numba-CUDA, one launch over every layer).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from llvmlite import ir
from numba import config, cuda, njit, prange, types
from numba.extending import intrinsic

from kernels_numba._device import fastest, serialized

GROUP_TOKEN = 64
GROUP_CHANNEL = 32
F16_BITS = 16
BITS = (2, 3, 4, 8, F16_BITS)
H2F = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)  # f16 bits -> value


# ---- layout ---------------------------------------------------------------------------------


LAYOUT_VERSION = 2  # per-channel codes in planes (see above)


def layer_shape(bits: int, per_channel: bool, cells: int, width: int) -> tuple[int, int, int]:
    """(rows, cols, group) of one layer's groups: per-token rows are cells, per-channel rows
    are channels (the codes' byte order is in the module's docstring)."""
    if per_channel:
        return width, cells, GROUP_CHANNEL
    return cells, width, GROUP_TOKEN


def layer_sizes(bits: int, per_channel: bool, cells: int, width: int) -> tuple[int, int]:
    """(code bytes, groups) of one layer."""
    if bits == F16_BITS:
        return cells * width * 2, 0
    rows, cols, g = layer_shape(bits, per_channel, cells, width)
    ng = (cols + g - 1) // g
    return rows * ng * g * bits // 8, rows * ng


def offsets(
    bits: np.ndarray, per_channel: np.ndarray, cells: int, width: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-layer starts (and totals, the last entry) of codes, groups and rows (the tasks a
    parallel call splits). Read-only arrays, cached: a session's blocks share a few layouts."""
    b = np.ascontiguousarray(bits, np.int64)
    pc = np.ascontiguousarray(per_channel, np.bool_)
    return _offsets(b.tobytes(), pc.tobytes(), cells, width)


@functools.lru_cache(maxsize=256)
def _offsets(bits_b: bytes, pc_b: bytes, cells: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    b = np.frombuffer(bits_b, np.int64)
    pc = np.frombuffer(pc_b, np.bool_)
    bad = (b != 2) & (b != 3) & (b != 4) & (b != 8) & (b != F16_BITS)
    if bad.any():
        raise ValueError(f"bits must be one of {BITS}, not {int(b[bad][0])}")
    rows = np.where(pc, width, cells)
    cols = np.where(pc, cells, width)
    g = np.where(pc, GROUP_CHANNEL, GROUP_TOKEN)
    ng = -(-cols // g)
    f16 = b == F16_BITS
    code = np.where(f16, cells * width * 2, rows * ng * g * b // 8)
    groups = np.where(f16, 0, rows * ng)
    out = []
    for per_layer in (code, groups, np.where(f16, cells, rows)):
        o = np.zeros(len(b) + 1, np.int64)
        np.cumsum(per_layer, out=o[1:])
        o.flags.writeable = False
        out.append(o)
    return out[0], out[1], out[2]


def check_block(x: np.ndarray) -> None:
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.dtype != np.uint16:
        raise ValueError("expected f16 bits as a 3-D uint16 array [layers, cells, width]")


def params_ref(lo: np.ndarray, hi: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    zero = lo.astype(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        scale = ((hi - zero.astype(np.float32)) / np.float32((1 << bits) - 1)).astype(np.float16)
    return zero, scale


# ---- numpy reference --------------------------------------------------------------------------


def _token_mask(token: np.ndarray | None, L: int) -> np.ndarray:
    return np.ones(L, np.bool_) if token is None else np.ascontiguousarray(token, np.bool_)


def ranges_ref(x: np.ndarray, channel: bool, token: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Per-token group min/max [L, cells, ceil(width/GT)] and each layer's sum of squares,
    for the layers in the ``token`` mask (default all; NaN for the others: K needs them
    only for its few Q8 layers), and per-channel group min/max [L, ceil(cells/GC), width]
    (width 0 unless ``channel``)."""
    tm = _token_mask(token, x.shape[0])
    f = H2F[x]
    L, C, W = f.shape
    gt, gc = -(-W // GROUP_TOKEN), -(-C // GROUP_CHANNEL)
    pad = np.full((L, C, gt * GROUP_TOKEN), np.nan, np.float32)
    pad[:, :, :W] = f
    t = pad.reshape(L, C, gt, GROUP_TOKEN)
    tlo, thi = np.nanmin(t, axis=3), np.nanmax(t, axis=3)
    if channel:
        padc = np.full((L, W, gc * GROUP_CHANNEL), np.nan, np.float32)
        padc[:, :, :C] = f.transpose(0, 2, 1)
        c = padc.reshape(L, W, gc, GROUP_CHANNEL)
        clo, chi = np.nanmin(c, axis=3).transpose(0, 2, 1), np.nanmax(c, axis=3).transpose(0, 2, 1)
    else:
        clo = chi = np.zeros((L, gc, 0), np.float32)
    ss = (f.astype(np.float64) ** 2).sum(axis=(1, 2))
    tlo[~tm], thi[~tm], ss[~tm] = np.nan, np.nan, np.nan
    return tlo, thi, clo, chi, ss


def _rows_of(f: np.ndarray, per_channel: bool) -> np.ndarray:
    return f.T if per_channel else f


def _params_of(p: np.ndarray, rows: int, per_channel: bool) -> np.ndarray:
    """A layer's parameters as float32 [rows, groups] (per-channel ones are stored
    [groups, channels])."""
    f = p.astype(np.float32)
    return f.reshape(-1, rows).T if per_channel else f.reshape(rows, -1)


def _encode_rows_ref(x: np.ndarray, zero: np.ndarray, scale: np.ndarray, bits: int, group: int) -> np.ndarray:
    """Rows of float32 values -> little-endian packed codes, in float32 arithmetic as the
    kernels compute (twice the SIMD lanes of float64; f16 inputs lose nothing)."""
    rows, cols = x.shape
    g = -(-cols // group)
    zs = np.repeat(zero, group, axis=1)[:, :cols]
    ss = np.repeat(scale, group, axis=1)[:, :cols]
    inv = np.where(ss > 0, np.float32(1.0) / np.where(ss > 0, ss, np.float32(1)), np.float32(0)).astype(np.float32)
    q = np.floor((x - zs) * inv + np.float32(0.5))
    codes = np.zeros((rows, g * group), np.uint32)
    codes[:, :cols] = np.clip(q, 0, (1 << bits) - 1).astype(np.uint32)
    stream = ((codes[:, :, None] >> np.arange(bits, dtype=np.uint32)) & 1).astype(np.uint8).reshape(rows, -1)
    return np.packbits(stream, axis=1, bitorder="little")


def encode_ref(
    x: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    L, C, W = x.shape
    code_off, param_off, _ = offsets(bits, per_channel, C, W)
    out = np.zeros(int(code_off[-1]), np.uint8)
    for i in range(L):
        b, pc = int(bits[i]), bool(per_channel[i])
        if b == F16_BITS:
            out[code_off[i] : code_off[i + 1]] = np.ascontiguousarray(x[i]).view(np.uint8).ravel()
            continue
        rows, cols, g = layer_shape(b, pc, C, W)
        a = np.ascontiguousarray(_rows_of(H2F[x[i]], pc))
        z, s = (_params_of(p[param_off[i] : param_off[i + 1]], rows, pc) for p in (zero, scale))
        codes = _encode_rows_ref(a, z, s, b, g)  # [rows, groups * group bytes]
        if pc:  # [channels, groups, bytes] -> [groups, bytes, channels]
            codes = codes.reshape(rows, -1, g * b // 8).transpose(1, 2, 0)
        out[code_off[i] : code_off[i + 1]] = codes.ravel()
    return out


def decode_ref(
    codes: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray, out: np.ndarray
) -> None:
    """Writes f16 bits into ``out`` [L, cells, width] (any strides)."""
    L, C, W = out.shape
    code_off, param_off, _ = offsets(bits, per_channel, C, W)
    for i in range(L):
        b, pc = int(bits[i]), bool(per_channel[i])
        seg = codes[code_off[i] : code_off[i + 1]]
        if b == F16_BITS:
            out[i] = seg.view(np.uint16).reshape(C, W)
            continue
        rows, cols, g = layer_shape(b, pc, C, W)
        ng = -(-cols // g)
        z, s = (_params_of(p[param_off[i] : param_off[i + 1]], rows, pc) for p in (zero, scale))
        if pc:  # [groups, bytes, channels] -> [channels, groups * bytes]
            seg = seg.reshape(ng, g * b // 8, rows).transpose(2, 0, 1)
        stream = np.unpackbits(seg.reshape(rows, -1), axis=1, bitorder="little").reshape(rows, -1, b)
        q = (stream.astype(np.uint32) << np.arange(b, dtype=np.uint32)).sum(axis=2)[:, :cols]
        v = np.repeat(z, g, axis=1)[:, :cols] + q.astype(np.float32) * np.repeat(s, g, axis=1)[:, :cols]
        out[i] = _rows_of(v.astype(np.float16).view(np.uint16), pc)


# ---- Numba CPU --------------------------------------------------------------------------------


@intrinsic
def _h2f(typingctx, h):
    """f16 bits -> float32 by the hardware conversion (F16C on x86-64, native on arm64)."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return sig, codegen


@intrinsic
def _f2h(typingctx, v):
    """float32 -> f16 bits, round to nearest even, by the hardware conversion."""
    sig = types.uint16(types.float32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return sig, codegen


# The CPU kernels take a block as one flat f16-bits array and its layer and cell strides
# (``_flat``), and index inner loops through slices: an index numba cannot prove
# non-negative gets a wraparound select that stops LLVM from vectorizing the loop (5-8x
# slower here), while a slice's own loop index is provably in range.


@njit(inline="always")
def _pack(q, n_codes, b, out):
    """``n_codes`` (a multiple of 8) codes -> ``n_codes * b / 8`` bytes, little-endian."""
    if b == 8:
        for u in range(n_codes):
            out[u] = q[u]
    elif b == 4:
        for u in range(n_codes // 2):
            out[u] = q[2 * u] | (q[2 * u + 1] << 4)
    elif b == 2:
        for u in range(n_codes // 4):
            out[u] = q[4 * u] | (q[4 * u + 1] << 2) | (q[4 * u + 2] << 4) | (q[4 * u + 3] << 6)
    else:  # 3 bits: 8 codes in 3 bytes
        for k in range(n_codes // 8):
            w = np.uint32(0)
            for t in range(8):
                w |= np.uint32(q[8 * k + t]) << np.uint32(3 * t)
            out[3 * k] = w & 0xFF
            out[3 * k + 1] = (w >> 8) & 0xFF
            out[3 * k + 2] = (w >> 16) & 0xFF


@njit(inline="always")
def _pack_planes(q, W, b, out):
    """A per-channel group's codes ``q`` [GROUP_CHANNEL, W] -> its byte planes ``out``
    (plane k: byte k of every channel's packed group)."""
    if b == 4:
        for k in range(GROUP_CHANNEL // 2):
            row, a, c = out[k * W : (k + 1) * W], q[2 * k], q[2 * k + 1]
            for d in range(W):
                row[d] = a[d] | (c[d] << 4)
    elif b == 2:
        for k in range(GROUP_CHANNEL // 4):
            row, a, c, e, f = out[k * W : (k + 1) * W], q[4 * k], q[4 * k + 1], q[4 * k + 2], q[4 * k + 3]
            for d in range(W):
                row[d] = a[d] | (c[d] << 2) | (e[d] << 4) | (f[d] << 6)
    elif b == 8:
        for k in range(GROUP_CHANNEL):
            row, a = out[k * W : (k + 1) * W], q[k]
            for d in range(W):
                row[d] = a[d]
    else:  # 3 bits: 8 codes in 3 bytes
        for k in range(GROUP_CHANNEL // 8):
            r0, r1, r2 = (
                out[3 * k * W : (3 * k + 1) * W],
                out[(3 * k + 1) * W : (3 * k + 2) * W],
                out[(3 * k + 2) * W : (3 * k + 3) * W],
            )
            for d in range(W):
                w = np.uint32(0)
                for t in range(8):
                    w |= np.uint32(q[8 * k + t, d]) << np.uint32(3 * t)
                r0[d] = w & 0xFF
                r1[d] = (w >> 8) & 0xFF
                r2[d] = (w >> 16) & 0xFF


@njit(inline="always")
def _unpack_planes(planes, W, b, q):
    """The inverse of ``_pack_planes``."""
    if b == 4:
        for k in range(GROUP_CHANNEL // 2):
            row, a, c = planes[k * W : (k + 1) * W], q[2 * k], q[2 * k + 1]
            for d in range(W):
                a[d] = row[d] & 15
                c[d] = row[d] >> 4
    elif b == 2:
        for k in range(GROUP_CHANNEL // 4):
            row, a, c, e, f = planes[k * W : (k + 1) * W], q[4 * k], q[4 * k + 1], q[4 * k + 2], q[4 * k + 3]
            for d in range(W):
                a[d] = row[d] & 3
                c[d] = (row[d] >> 2) & 3
                e[d] = (row[d] >> 4) & 3
                f[d] = row[d] >> 6
    elif b == 8:
        for k in range(GROUP_CHANNEL):
            row, a = planes[k * W : (k + 1) * W], q[k]
            for d in range(W):
                a[d] = row[d]
    else:
        for k in range(GROUP_CHANNEL // 8):
            r0, r1, r2 = (
                planes[3 * k * W : (3 * k + 1) * W],
                planes[(3 * k + 1) * W : (3 * k + 2) * W],
                planes[(3 * k + 2) * W : (3 * k + 3) * W],
            )
            for d in range(W):
                w = np.uint32(r0[d]) | (np.uint32(r1[d]) << 8) | (np.uint32(r2[d]) << 16)
                for t in range(8):
                    q[8 * k + t, d] = (w >> (3 * t)) & 7


@njit(inline="always")
def _unpack(codes, n_codes, b, q):
    if b == 8:
        for u in range(n_codes):
            q[u] = codes[u]
    elif b == 4:
        for u in range(n_codes // 2):
            c = codes[u]
            q[2 * u] = c & 15
            q[2 * u + 1] = c >> 4
    elif b == 2:
        for u in range(n_codes // 4):
            c = codes[u]
            q[4 * u] = c & 3
            q[4 * u + 1] = (c >> 2) & 3
            q[4 * u + 2] = (c >> 4) & 3
            q[4 * u + 3] = c >> 6
    else:
        for k in range(n_codes // 8):
            w = np.uint32(codes[3 * k]) | (np.uint32(codes[3 * k + 1]) << 8) | (np.uint32(codes[3 * k + 2]) << 16)
            for t in range(8):
                q[8 * k + t] = (w >> (3 * t)) & 7


@njit(inline="always")
def _inv(s):
    return np.float32(1.0) / s if s > 0 else np.float32(0.0)


@njit(inline="always")
def _quantize(v, top):
    """floor(v) clamped to [0, top], as the reference computes it: for v >= 0 floor is a
    truncation, which vectorizes."""
    v = np.float32(0.0) if v < np.float32(0.0) else (top if v > top else v)
    return np.uint8(np.int32(v))


@njit(inline="always")
def _copy_f16(x, r, W, out):
    src = x[r : r + W]
    for d in range(W):
        out[2 * d] = src[d] & 0xFF
        out[2 * d + 1] = src[d] >> 8


@njit(inline="always")
def encode_layer(x, i, C, W, sL, sC, b, per_channel, zero, scale, p0, out, o0):
    """Layer ``i`` of a flat block (see ``_flat``) into ``out[o0:]``, its parameters' f16 bits
    at ``zero[p0:]``/``scale[p0:]``. Per-channel layers are encoded a group of cells at a
    time, so every loop runs along the channels of a cell (contiguous, vectorized) and
    nothing is transposed."""
    if b == 16:
        for c in range(C):
            _copy_f16(x, i * sL + c * sC, W, out[o0 + 2 * c * W : o0 + 2 * (c + 1) * W])
        return
    top = np.float32((1 << b) - 1)
    if per_channel:
        g = GROUP_CHANNEL
        ng = (C + g - 1) // g
        gb = g * b // 8
        zj = np.empty(W, np.float32)
        ij = np.empty(W, np.float32)
        q = np.zeros((g, W), np.uint8)
        for j in range(ng):
            pz = zero[p0 + j * W : p0 + (j + 1) * W]
            ps = scale[p0 + j * W : p0 + (j + 1) * W]
            for d in range(W):
                zj[d] = _h2f(pz[d])  # type: ignore[call-arg]
                ij[d] = _inv(_h2f(ps[d]))
            n = min(C, (j + 1) * g) - j * g
            for u in range(n):
                r = i * sL + (j * g + u) * sC
                src = x[r : r + W]
                qu = q[u]
                for d in range(W):
                    qu[d] = _quantize((_h2f(src[d]) - zj[d]) * ij[d] + np.float32(0.5), top)  # type: ignore[call-arg]
            for u in range(n, g):
                q[u, :] = 0
            o = o0 + j * gb * W
            _pack_planes(q, W, b, out[o : o + gb * W])
    else:
        g = GROUP_TOKEN
        ng = (W + g - 1) // g
        gb = g * b // 8
        q = np.zeros(ng * g, np.uint8)  # the row's last group padded with zero codes
        zr = np.empty(ng * g, np.float32)  # each value's group parameters
        ir = np.empty(ng * g, np.float32)
        for c in range(C):
            pz = zero[p0 + c * ng : p0 + (c + 1) * ng]
            ps = scale[p0 + c * ng : p0 + (c + 1) * ng]
            for j in range(ng):
                zr[j * g : (j + 1) * g] = _h2f(pz[j])  # type: ignore[call-arg]
                ir[j * g : (j + 1) * g] = _inv(_h2f(ps[j]))
            r = i * sL + c * sC
            src = x[r : r + W]
            for d in range(W):
                q[d] = _quantize((_h2f(src[d]) - zr[d]) * ir[d] + np.float32(0.5), top)  # type: ignore[call-arg]
            o = o0 + c * ng * gb
            _pack(q, ng * g, b, out[o : o + ng * gb])


@serialized
@njit(parallel=True, nogil=True, cache=True)
def _encode_cpu(x, L, C, W, sL, sC, bits, per_channel, zero, scale, code_off, param_off, out):
    """``x``: the block's f16 bits, flat (see ``_flat``); ``zero``/``scale``: the f16
    parameters' bits, flat; ``out``: uint8 flat."""
    for i in prange(L):
        encode_layer(x, i, C, W, sL, sC, bits[i], per_channel[i], zero, scale, param_off[i], out, code_off[i])
    return out


@serialized
@njit(parallel=True, nogil=True, cache=True)
def _decode_cpu(codes, bits, per_channel, zero, scale, code_off, param_off, out, L, C, W, sL, sC):
    """Writes f16 bits into ``out``, flat (see ``_flat``)."""
    for i in prange(L):
        b = bits[i]
        o0, p0 = code_off[i], param_off[i]
        if b == 16:
            for c in range(C):
                src = codes[o0 + 2 * c * W : o0 + 2 * (c + 1) * W]
                dst = out[i * sL + c * sC : i * sL + c * sC + W]
                for d in range(W):
                    dst[d] = np.uint16(src[2 * d]) | (np.uint16(src[2 * d + 1]) << np.uint16(8))
            continue
        if per_channel[i]:
            g = GROUP_CHANNEL
            ng = (C + g - 1) // g
            gb = g * b // 8
            q = np.empty((g, W), np.uint8)
            zj = np.empty(W, np.float32)
            sj = np.empty(W, np.float32)
            for j in range(ng):
                pz = zero[p0 + j * W : p0 + (j + 1) * W]
                ps = scale[p0 + j * W : p0 + (j + 1) * W]
                for d in range(W):
                    zj[d] = _h2f(pz[d])  # type: ignore[call-arg]
                    sj[d] = _h2f(ps[d])
                o = o0 + j * gb * W
                _unpack_planes(codes[o : o + gb * W], W, b, q)
                for u in range(min(C, (j + 1) * g) - j * g):
                    r = i * sL + (j * g + u) * sC
                    dst = out[r : r + W]
                    qu = q[u]
                    for d in range(W):
                        dst[d] = _f2h(zj[d] + np.float32(qu[d]) * sj[d])  # type: ignore[call-arg]
        else:
            g = GROUP_TOKEN
            ng = (W + g - 1) // g
            gb = g * b // 8
            q = np.empty(ng * g, np.uint8)
            zr = np.empty(ng * g, np.float32)
            sr = np.empty(ng * g, np.float32)
            for c in range(C):
                o = o0 + c * ng * gb
                _unpack(codes[o : o + ng * gb], ng * g, b, q)
                pz = zero[p0 + c * ng : p0 + (c + 1) * ng]
                ps = scale[p0 + c * ng : p0 + (c + 1) * ng]
                for j in range(ng):
                    zr[j * g : (j + 1) * g] = _h2f(pz[j])  # type: ignore[call-arg]
                    sr[j * g : (j + 1) * g] = _h2f(ps[j])
                r = i * sL + c * sC
                dst = out[r : r + W]
                for d in range(W):
                    dst[d] = _f2h(zr[d] + np.float32(q[d]) * sr[d])  # type: ignore[call-arg]
    return out


# ---- Numba CUDA -------------------------------------------------------------------------------


@cuda.jit
def _ranges_kernel(x, lut, token, channel, tlo, thi, clo, chi, ss):
    # one thread per (layer, cell): token groups of its row; channel groups and the sum of
    # squares by atomics would race on floats, so the cell-0 thread of each channel group
    # does those
    i, c = cuda.grid(2)  # type: ignore[call-arg, var-annotated]
    L, C, W = x.shape
    if i >= L or c >= C:
        return
    for g in range(tlo.shape[2] if token[i] else 0):
        lo = lut[x[i, c, g * 64]]
        hi = lo
        for d in range(g * 64 + 1, min(W, (g + 1) * 64)):
            v = lut[x[i, c, d]]
            lo = min(lo, v)
            hi = max(hi, v)
        tlo[i, c, g] = lo
        thi[i, c, g] = hi
    if c % 32 == 0:
        j = c // 32
        for d in range(clo.shape[2]):
            lo = lut[x[i, c, d]]
            hi = lo
            for cc in range(c + 1, min(C, c + 32)):
                v = lut[x[i, cc, d]]
                lo = min(lo, v)
                hi = max(hi, v)
            clo[i, j, d] = lo
            chi[i, j, d] = hi
    if c == 0 and token[i]:
        acc = 0.0
        for cc in range(C):
            for d in range(W):
                v = lut[x[i, cc, d]]
                acc += v * v
        ss[i] = acc


if getattr(config, "ENABLE_CUDASIM", 0):  # the simulator runs Python: numpy float32 scalars round each op

    def _fsub(a, b):
        return np.float32(a) - np.float32(b)

    def _fmul(a, b):
        return np.float32(a) * np.float32(b)

    def _fadd(a, b):
        return np.float32(a) + np.float32(b)

else:  # round each op as the CPU does: NVVM would otherwise fuse the multiply-add
    from numba.cuda import libdevice

    _fsub, _fmul, _fadd = libdevice.fsub_rn, libdevice.fmul_rn, libdevice.fadd_rn


@cuda.jit
def _encode_kernel(x, lut, bits, per_channel, zero, scale, code_off, param_off, row_off, out):
    t = cuda.grid(1)  # type: ignore[call-arg, var-annotated]
    L, C, W = x.shape
    if t >= row_off[L]:
        return
    i = 0
    while row_off[i + 1] <= t:
        i += 1
    r = t - row_off[i]
    b = int(bits[i])
    if b == 16:
        base = code_off[i] + r * W * 2
        for d in range(W):
            h = x[i, r, d]
            out[base + 2 * d] = h & 0xFF
            out[base + 2 * d + 1] = h >> 8
        return
    pc = per_channel[i]
    cols = C if pc else W
    g = 32 if pc else 64
    ng = (cols + g - 1) // g
    gb = g * b // 8
    top = (1 << b) - 1
    for j in range(ng):
        if pc:  # byte planes: byte k of channel r's group j at (j * gb + k) * W + r
            p = param_off[i] + j * W + r
            o, step = code_off[i] + j * gb * W + r, W
        else:
            p = param_off[i] + r * ng + j
            o, step = code_off[i] + (r * ng + j) * gb, 1
        z = zero[p]
        s = scale[p]
        inv = np.float32(1.0) / s if s > 0 else np.float32(0.0)
        for k in range(g // 8):
            w = 0
            for u in range(8):
                c = j * g + k * 8 + u
                if c < cols:
                    v = lut[x[i, c, r]] if pc else lut[x[i, r, c]]
                    q = int(math.floor(_fadd(_fmul(_fsub(v, z), inv), np.float32(0.5))))
                    q = 0 if q < 0 else (top if q > top else q)
                    w |= q << (u * b)
            for u in range(b):
                out[o + (k * b + u) * step] = (w >> (8 * u)) & 0xFF


@cuda.jit
def _decode_kernel(codes, lut, bits, per_channel, zero, scale, code_off, param_off, row_off, out):
    # ``out`` is float16 here: the GPU narrows float32 with round-to-nearest-even
    t = cuda.grid(1)  # type: ignore[call-arg, var-annotated]
    L, C, W = out.shape
    if t >= row_off[L]:
        return
    i = 0
    while row_off[i + 1] <= t:
        i += 1
    r = t - row_off[i]
    b = int(bits[i])
    if b == 16:
        base = code_off[i] + r * W * 2
        for d in range(W):
            out[i, r, d] = lut[int(codes[base + 2 * d]) | (int(codes[base + 2 * d + 1]) << 8)]  # exact
        return
    pc = per_channel[i]
    cols = C if pc else W
    g = 32 if pc else 64
    ng = (cols + g - 1) // g
    gb = g * b // 8
    mask = (1 << b) - 1
    for j in range(ng):
        if pc:
            p = param_off[i] + j * W + r
            o, step = code_off[i] + j * gb * W + r, W
        else:
            p = param_off[i] + r * ng + j
            o, step = code_off[i] + (r * ng + j) * gb, 1
        z = zero[p]
        s = scale[p]
        for k in range(g // 8):
            w = 0
            for u in range(b):
                w |= int(codes[o + (k * b + u) * step]) << (8 * u)
            for u in range(8):
                c = j * g + k * 8 + u
                if c < cols:
                    v = z + np.float32((w >> (u * b)) & mask) * s
                    if pc:
                        out[i, c, r] = v
                    else:
                        out[i, r, c] = v


def ranges_cuda(x: np.ndarray, channel: bool, token: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    L, C, W = x.shape
    tm = _token_mask(token, L)
    gt, gc = -(-W // GROUP_TOKEN), -(-C // GROUP_CHANNEL)
    tlo = cuda.device_array((L, C, gt), np.float32)
    thi = cuda.device_array((L, C, gt), np.float32)
    clo = cuda.device_array((L, gc, W if channel else 0), np.float32)
    chi = cuda.device_array((L, gc, W if channel else 0), np.float32)
    ss = cuda.device_array(L, np.float64)
    tpb = (1, 128)
    grid = (L, -(-C // tpb[1]))
    _ranges_kernel[grid, tpb](
        cuda.to_device(np.ascontiguousarray(x)),
        cuda.to_device(H2F),
        cuda.to_device(tm),
        channel,
        tlo,
        thi,
        clo,
        chi,
        ss,
    )
    tlo_h, thi_h, ss_h = tlo.copy_to_host(), thi.copy_to_host(), ss.copy_to_host()
    tlo_h[~tm], thi_h[~tm], ss_h[~tm] = np.nan, np.nan, np.nan
    return tlo_h, thi_h, clo.copy_to_host(), chi.copy_to_host(), ss_h


def _tables(bits: np.ndarray, per_channel: np.ndarray, cells: int, width: int) -> tuple[np.ndarray, ...]:
    b = np.ascontiguousarray(bits, np.uint8)
    pc = np.ascontiguousarray(per_channel, np.bool_)
    return (b, pc, *offsets(b, pc, cells, width))


def encode_cuda(
    x: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    L, C, W = x.shape
    b, pc, code_off, param_off, row_off = _tables(bits, per_channel, C, W)
    d_out = cuda.device_array(int(code_off[-1]), np.uint8)
    n = int(row_off[-1])
    _encode_kernel[-(-n // 128), 128](
        cuda.to_device(np.ascontiguousarray(x)),
        cuda.to_device(H2F),
        cuda.to_device(b),
        cuda.to_device(pc),
        cuda.to_device(zero.astype(np.float32)),
        cuda.to_device(scale.astype(np.float32)),
        cuda.to_device(code_off),
        cuda.to_device(param_off),
        cuda.to_device(row_off),
        d_out,
    )
    return d_out.copy_to_host()


def decode_cuda(
    codes: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray, out: np.ndarray
) -> None:
    L, C, W = out.shape
    b, pc, code_off, param_off, row_off = _tables(bits, per_channel, C, W)
    d_out = cuda.device_array(out.shape, np.float16)
    n = int(row_off[-1])
    _decode_kernel[-(-n // 128), 128](
        cuda.to_device(codes),
        cuda.to_device(H2F),
        cuda.to_device(b),
        cuda.to_device(pc),
        cuda.to_device(zero.astype(np.float32)),
        cuda.to_device(scale.astype(np.float32)),
        cuda.to_device(code_off),
        cuda.to_device(param_off),
        cuda.to_device(row_off),
        d_out,
    )
    out[...] = d_out.copy_to_host().view(np.uint16)


# ---- CPU wrappers and dispatch ------------------------------------------------------------------


def _bits16(p: np.ndarray) -> np.ndarray:
    """f16 parameters as the uint16 bit patterns the CPU kernels widen themselves."""
    return np.ascontiguousarray(p, np.float16).view(np.uint16)


def _flat(x: np.ndarray) -> tuple[np.ndarray, int, int] | None:
    """A [L, C, W] array whose rows are contiguous and do not overlap as one flat view from
    its first element, with its layer and cell strides in elements; None otherwise (a
    transposed V without flash attention, odd strides)."""
    L, C, W = x.shape
    it = x.itemsize
    sL, sC, sW = x.strides
    if L == 0 or C == 0 or W == 0 or sW != it or sL % it or sC % it:
        return None
    sL, sC = sL // it, sC // it
    if sC < W or (L > 1 and sL < (C - 1) * sC + W):
        return None
    span = (L - 1) * sL + (C - 1) * sC + W
    return np.lib.stride_tricks.as_strided(x, (span,), (it,), writeable=x.flags.writeable), sL, sC


def _flat_or_copy(x: np.ndarray) -> tuple[np.ndarray, int, int]:
    got = _flat(x)
    if got is not None:
        return got
    c = np.ascontiguousarray(x)
    return c.reshape(-1), x.shape[1] * x.shape[2], x.shape[2]


def encode_cpu(
    x: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    L, C, W = x.shape
    b, pc, code_off, param_off, row_off = _tables(bits, per_channel, C, W)
    out = np.empty(int(code_off[-1]), np.uint8)
    if L == 0 or C == 0 or W == 0:
        return out
    flat, sL, sC = _flat_or_copy(x)
    return _encode_cpu(flat, L, C, W, sL, sC, b, pc, _bits16(zero), _bits16(scale), code_off, param_off, out)


def decode_cpu(
    codes: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray, out: np.ndarray
) -> None:
    L, C, W = out.shape
    if L == 0 or C == 0 or W == 0:
        return
    b, pc, code_off, param_off, row_off = _tables(bits, per_channel, C, W)
    got = _flat(out)
    dst, sL, sC = got if got is not None else (np.empty(L * C * W, np.uint16), C * W, W)
    _decode_cpu(codes, b, pc, _bits16(zero), _bits16(scale), code_off, param_off, dst, L, C, W, sL, sC)
    if got is None:
        out[...] = dst.reshape(L, C, W)


def encode(x: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray) -> np.ndarray:
    check_block(x)
    return fastest("kv_block.encode", x.shape, encode_cpu, encode_cuda)(x, bits, per_channel, zero, scale)


def decode(
    codes: np.ndarray, bits: np.ndarray, per_channel: np.ndarray, zero: np.ndarray, scale: np.ndarray, out: np.ndarray
) -> None:
    check_block(out)
    if codes.dtype != np.uint8 or codes.ndim != 1:
        raise ValueError("codes must be a flat uint8 array")
    L, C, W = out.shape
    code_off, param_off, _ = offsets(bits, per_channel, C, W)
    if len(codes) != code_off[-1] or len(zero) != param_off[-1] or len(scale) != param_off[-1]:
        raise ValueError(
            f"codes/params do not match the layout: {len(codes)} bytes and {len(zero)} groups "
            f"for {code_off[-1]} and {param_off[-1]}"
        )
    fastest("kv_block.decode", out.shape, decode_cpu, decode_cuda)(codes, bits, per_channel, zero, scale, out)
