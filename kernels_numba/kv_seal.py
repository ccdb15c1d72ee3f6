"""Sealing a run of KV layers: measure, choose each layer's format, encode - one pass.

A block's K (or V) is [layers, cells, width] f16 bits. Per layer the seal measures group
ranges, estimates every format's error in closed form from them, takes the cheapest allowed
format under the threshold (the first in ``allowed`` that passes; 16 always does), derives the
group parameters and encodes. On the CPU all of it runs in one parallel call over layers,
each layer's ~100 KB still in cache for the second pass; there is no per-layer, per-format
dispatch and no trial encode.

The estimates (what they stand for: ``localsym.memory.kv_quant``), with ``levels = 2^b - 1``:
- V, per-token groups: relative L2 = sqrt(sum_g n_g s_g^2 / 12) / |V| with the group's range
  as ``s_g * levels``.
- K, per-channel groups (2-4 bits): a logit's change for a query q is a sum of the rounding
  errors weighted by q; its variance over head h is sum_d q_d^2 range_gd^2 / (12 levels^2).
  The block's own keys (every ``cells/16``-th) serve as queries; the largest over groups,
  times sqrt(2 ln 2C) / sqrt(hd), is averaged over queries and heads.
- K at 8 bits (per-token groups) the same over cells, computed only where the 4-bit estimate
  fails the threshold (Q8 is rarely needed and costs a pass over the cells).
``calib`` divides each K estimate by its measured overstatement (per-channel, q8).

Versions: ``seal_ref`` (numpy), ``seal_cpu`` (Numba, one parallel region), ``seal_cuda``
(the device's range and encode kernels around the numpy estimates).
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from kernels_numba import kv_block as kb
from kernels_numba._device import fastest, serialized
from kernels_numba.kv_block import GROUP_CHANNEL, GROUP_TOKEN, _f2h, _h2f, encode_layer

N_QUERIES = 16
PC_BITS = (2, 3, 4)  # K's per-channel formats
_COL = {2: 0, 3: 1, 4: 2, 8: 3, 16: 4}  # a format's column in ``errors``


class SealedRun(NamedTuple):
    bits: np.ndarray  # uint8 [L]
    per_channel: np.ndarray  # bool [L]
    codes: np.ndarray  # uint8, layer after layer (kv_block's layout)
    zero: np.ndarray  # float16, one per group
    scale: np.ndarray  # float16
    errors: np.ndarray  # float64 [L, 5]: estimates for 2, 3, 4, 8, 16 bits (inf: not computed)


def _levels(b: int) -> float:
    return float((1 << b) - 1)


def _check(x: np.ndarray, allowed: np.ndarray, key: bool, n_head_kv: int) -> np.ndarray:
    kb.check_block(x)
    a = np.ascontiguousarray(allowed, np.uint8)
    if len(a) == 0 or any(int(b) not in _COL for b in a):
        raise ValueError(f"allowed must list formats among {tuple(_COL)}, cheapest first")
    if key and (x.shape[2] % n_head_kv or n_head_kv < 1):
        raise ValueError(f"width {x.shape[2]} is not a whole number of {n_head_kv} heads")
    return a


# ---- numpy reference (and the estimates the CUDA version shares) -------------------------------


def sample_queries(x: np.ndarray) -> np.ndarray:
    """[L, q, width] float32: every (cells / 16)-th key of each layer."""
    step = max(1, x.shape[1] // N_QUERIES)
    return kb.H2F[x[:, ::step, :]]


def v_estimates(tlo: np.ndarray, thi: np.ndarray, sumsq: np.ndarray, width: int) -> np.ndarray:
    gt = tlo.shape[2]
    n_g = np.full(gt, GROUP_TOKEN, np.float32)
    n_g[-1] = width - GROUP_TOKEN * (gt - 1)
    span = thi - tlo
    base = np.sqrt(((span * span) * n_g).sum(axis=(1, 2), dtype=np.float64) / 12.0)
    base /= np.sqrt(np.maximum(sumsq, 1e-30))
    return np.stack([base / _levels(b) if b != 16 else np.zeros_like(base) for b in _COL], axis=1)


def _kappa(cells: int, hd: int) -> float:
    return math.sqrt(2 * math.log(2 * cells)) / math.sqrt(12.0 * hd)


def k_channel_base(
    clo: np.ndarray, chi: np.ndarray, q: np.ndarray, cells: int, n_head_kv: int, calib: float
) -> np.ndarray:
    """The per-channel formats' estimate times their levels, per layer."""
    L, nq, W = q.shape
    hd = W // n_head_kv
    q2 = (q * q).reshape(L, nq, n_head_kv, hd).transpose(0, 2, 1, 3)  # [L, H, q, hd]
    span = (chi - clo).transpose(0, 2, 1)  # [L, W, groups]
    var = np.matmul(q2, (span * span).reshape(L, n_head_kv, hd, -1))  # [L, H, q, groups]
    return _kappa(cells, hd) / calib * np.sqrt(var.max(axis=3)).mean(axis=(1, 2), dtype=np.float64)


def k_q8_estimate(tlo: np.ndarray, thi: np.ndarray, q: np.ndarray, n_head_kv: int, calib: float) -> np.ndarray:
    L, C, _ = tlo.shape
    W = q.shape[2]
    hd = W // n_head_kv
    q2 = (q * q).reshape(L, -1, n_head_kv, hd).transpose(0, 2, 1, 3)  # [L, H, q, hd]
    sp = thi - tlo
    sc = np.repeat(sp, GROUP_TOKEN, axis=2)[:, :, :W].reshape(L, C, n_head_kv, hd)
    var8 = np.matmul(q2, (sc * sc).transpose(0, 2, 3, 1))  # [L, H, q, C]
    return _kappa(C, hd) / calib / _levels(8) * np.sqrt(var8.max(axis=3)).mean(axis=(1, 2), dtype=np.float64)


def choose(errors: np.ndarray, allowed: np.ndarray, fixed: bool, threshold: float) -> np.ndarray:
    """Per layer, the first allowed format whose estimate is under ``threshold``."""
    out = np.full(len(errors), 16, np.uint8)
    for i, row in enumerate(errors):
        for b in allowed:
            if fixed or b == 16 or row[_COL[int(b)]] <= threshold:
                out[i] = b
                break
    return out


def _seal_composed(x, allowed, fixed, threshold, key, n_head_kv, calib, ranges, encode) -> SealedRun:
    """Ranges and encode from ``ranges``/``encode`` (numpy or a device's), estimates in numpy."""
    L, C, W = x.shape
    errors = np.full((L, 5), np.inf)
    errors[:, 4] = 0.0
    first = int(allowed[0])
    if fixed:
        bits = np.full(L, first, np.uint8)
        pc = np.full(L, key and first in PC_BITS)
        tlo, thi, clo, chi, _ = ranges(x, bool(key and pc.any()), ~pc if first != 16 else np.zeros(L, bool))
    elif not key:
        tlo, thi, clo, chi, ss = ranges(x, False, None)
        errors = v_estimates(tlo, thi, ss, W)
        bits = choose(errors, allowed, False, threshold)
        pc = np.zeros(L, bool)
    else:
        tlo, thi, clo, chi, _ = ranges(x, True, np.zeros(L, bool))
        q = sample_queries(x)
        base = k_channel_base(clo, chi, q, C, n_head_kv, calib[0])
        for b in PC_BITS:
            errors[:, _COL[b]] = base / _levels(b)
        need = errors[:, _COL[4]] > threshold if 4 in allowed else np.ones(L, bool)
        if 8 in allowed and need.any():
            t = ranges(x, False, need)
            tlo[need], thi[need] = t[0][need], t[1][need]
            errors[need, _COL[8]] = k_q8_estimate(tlo[need], thi[need], q[need], n_head_kv, calib[1])
        bits = choose(errors, allowed, False, threshold)
        pc = np.isin(bits, PC_BITS)
    zeros, scales = [], []
    for i in range(L):
        b = int(bits[i])
        if b != 16:
            z, s = kb.params_ref(*((clo[i], chi[i]) if pc[i] else (tlo[i], thi[i])), b)
            zeros.append(z.ravel())
            scales.append(s.ravel())
    zero = np.concatenate(zeros) if zeros else np.zeros(0, np.float16)
    scale = np.concatenate(scales) if scales else np.zeros(0, np.float16)
    return SealedRun(bits, pc, encode(x, bits, pc, zero, scale), zero, scale, errors)


def seal_ref(
    x: np.ndarray,
    allowed: np.ndarray,
    fixed: bool,
    threshold: float,
    key: bool,
    n_head_kv: int = 1,
    calib: tuple[float, float] = (1.0, 1.0),
) -> SealedRun:
    a = _check(x, allowed, key, n_head_kv)
    return _seal_composed(x, a, fixed, threshold, key, n_head_kv, calib, kb.ranges_ref, kb.encode_ref)


def seal_cuda(
    x: np.ndarray,
    allowed: np.ndarray,
    fixed: bool,
    threshold: float,
    key: bool,
    n_head_kv: int = 1,
    calib: tuple[float, float] = (1.0, 1.0),
) -> SealedRun:
    a = _check(x, allowed, key, n_head_kv)
    return _seal_composed(x, a, fixed, threshold, key, n_head_kv, calib, kb.ranges_cuda, kb.encode_cuda)


# ---- Numba CPU --------------------------------------------------------------------------------


@njit(inline="always")
def _key(h):
    """f16 bits -> a uint16 whose unsigned order is the float order (negatives flipped,
    positives above them): numba's float min/max reductions never vectorize, integer ones do
    (``vpminuw``)."""
    return h ^ (((h >> np.uint16(15)) * np.uint16(0x7FFF)) | np.uint16(0x8000))


@njit(inline="always")
def _unkey(k):
    return k ^ np.uint16(0x8000) if k & np.uint16(0x8000) else ~k


@njit(inline="always")
def _token_ranges(keys, W, lo_out, hi_out):
    for g in range(len(lo_out)):
        seg = keys[g * GROUP_TOKEN : min(W, (g + 1) * GROUP_TOKEN)]
        lo = seg[0]
        hi = lo
        for d in range(1, len(seg)):
            lo = min(lo, seg[d])
            hi = max(hi, seg[d])
        lo_out[g] = _h2f(_unkey(lo))  # type: ignore[call-arg]
        hi_out[g] = _h2f(_unkey(hi))


# The measuring helpers are compiled with fastmath (sums of squares and dot products, which then
# vectorize; minima and maxima are on integer keys, exact) and called, not inlined: LLVM keeps
# each instruction's flags when it inlines them, while ``_seal_cpu`` and the encoder it inlines
# stay exact (a fused multiply-add would move codes off the reference's).


@njit(nogil=True, cache=True, fastmath=True)
def _pass(x, r0, C, W, sC, tok, chan, keys, tlo, thi, lo_c, hi_c, clo, chi):
    """One pass over a layer's cells: per-token group ranges (``tok``; returns the sum of
    squares) and per-channel group ranges (``chan``), on order-preserving keys."""
    acc = 0.0
    for c in range(C):
        src = x[r0 + c * sC : r0 + c * sC + W]
        if tok:
            s = np.float32(0.0)
            for d in range(W):
                keys[d] = _key(src[d])
                f = _h2f(src[d])  # type: ignore[call-arg, var-annotated]
                s += f * f
            acc += s  # type: ignore[assignment]
            _token_ranges(keys, W, tlo[c], thi[c])
        else:
            for d in range(W):
                keys[d] = _key(src[d])
        if chan:
            if c % GROUP_CHANNEL == 0:
                lo_c[:] = keys
                hi_c[:] = keys
            else:
                for d in range(W):
                    lo_c[d] = min(lo_c[d], keys[d])
                    hi_c[d] = max(hi_c[d], keys[d])
            if c % GROUP_CHANNEL == GROUP_CHANNEL - 1 or c == C - 1:
                j = c // GROUP_CHANNEL
                dlo = clo[j]
                dhi = chi[j]
                for d in range(W):
                    dlo[d] = _h2f(_unkey(lo_c[d]))  # type: ignore[call-arg]
                    dhi[d] = _h2f(_unkey(hi_c[d]))
    return acc


@njit(nogil=True, cache=True, fastmath=True)
def _v_base(tlo, thi, W, ss):
    tot = 0.0
    for c in range(tlo.shape[0]):
        for g in range(tlo.shape[1]):
            sp = thi[c, g] - tlo[c, g]
            tot += (min(W, (g + 1) * GROUP_TOKEN) - g * GROUP_TOKEN) * sp * sp
    return math.sqrt(tot / 12.0) / math.sqrt(max(ss, 1e-30))


@njit(nogil=True, cache=True, fastmath=True)
def _squared_queries(x, r0, sC, W, step, nq):
    q2 = np.empty((nq, W), np.float32)
    for k in range(nq):
        src = x[r0 + k * step * sC : r0 + k * step * sC + W]
        dst = q2[k]
        for d in range(W):
            v = _h2f(src[d])  # type: ignore[call-arg, var-annotated]
            dst[d] = v * v
    return q2


@njit(nogil=True, cache=True, fastmath=True)
def _k_channel_sum(q2, clo, chi, n_head):
    """Sum over heads and queries of sqrt(max over groups of the logit variance) (times
    12 hd levels^2)."""
    gc, W = clo.shape
    hd = W // n_head
    s2 = np.empty((gc, W), np.float32)
    for g in range(gc):
        for d in range(W):
            sp = chi[g, d] - clo[g, d]
            s2[g, d] = sp * sp
    tot = 0.0
    for h in range(n_head):
        for k in range(q2.shape[0]):
            best = np.float32(0.0)
            qh = q2[k, h * hd : (h + 1) * hd]
            for g in range(gc):
                sh = s2[g, h * hd : (h + 1) * hd]
                var = np.float32(0.0)
                for d in range(hd):
                    var += qh[d] * sh[d]
                best = max(best, var)
            tot += math.sqrt(best)
    return tot


@njit(nogil=True, cache=True, fastmath=True)
def _k_q8_sum(q2, tlo, thi, n_head):
    """As ``_k_channel_sum`` over cells with per-token steps: a head's channels split by the
    token groups they fall in, so a cell costs a product per group, not per channel."""
    nq, W = q2.shape
    C, gt = tlo.shape
    hd = W // n_head
    part = np.zeros((n_head, nq, gt), np.float32)
    for h in range(n_head):
        for k in range(nq):
            for d in range(h * hd, (h + 1) * hd):
                part[h, k, d // GROUP_TOKEN] += q2[k, d]
    s2 = np.empty((C, gt), np.float32)
    for c in range(C):
        for g in range(gt):
            sp = thi[c, g] - tlo[c, g]
            s2[c, g] = sp * sp
    tot = 0.0
    for h in range(n_head):
        g0, g1 = (h * hd) // GROUP_TOKEN, ((h + 1) * hd - 1) // GROUP_TOKEN
        for k in range(nq):
            best = np.float32(0.0)
            for c in range(C):
                var = np.float32(0.0)
                for g in range(g0, g1 + 1):
                    var += part[h, k, g] * s2[c, g]
                best = max(best, var)
            tot += math.sqrt(best)
    return tot


@njit(inline="always")
def _params(lo, hi, b, zero, scale):
    levels = np.float32((1 << b) - 1)
    for k in range(len(lo)):
        z = _f2h(lo[k])  # type: ignore[call-arg, var-annotated]
        zero[k] = z
        scale[k] = _f2h((hi[k] - _h2f(z)) / levels)


@njit(inline="always")
def _col(b):
    return 0 if b == 2 else (1 if b == 3 else (2 if b == 4 else (3 if b == 8 else 4)))


@serialized
@njit(parallel=True, nogil=True, cache=True)
def _seal_cpu(
    x,
    L,
    C,
    W,
    sL,
    sC,
    key,
    allowed,
    fixed,
    thr,
    n_head,
    kap_pc,
    kap_q8,
    code_max,
    par_max,
    bits,
    pcs,
    codes,
    zero,
    scale,
    errors,
):
    gt = (W + GROUP_TOKEN - 1) // GROUP_TOKEN
    gc = (C + GROUP_CHANNEL - 1) // GROUP_CHANNEL
    step = max(1, C // N_QUERIES)
    nq = (C + step - 1) // step
    has4 = has8 = False
    for a in allowed:
        has4 = has4 or a == 4
        has8 = has8 or a == 8
    first = allowed[0]
    for i in prange(L):
        err = errors[i]
        err[:] = np.inf
        err[4] = 0.0
        keys = np.empty(W, np.uint16)
        lo_c = np.empty(W, np.uint16)
        hi_c = np.empty(W, np.uint16)
        tlo = np.empty((C, gt), np.float32)
        thi = np.empty((C, gt), np.float32)
        clo = np.empty((gc, W), np.float32)
        chi = np.empty((gc, W), np.float32)
        r0 = i * sL
        if fixed:
            tok = first == 8 or (first != 16 and not key)
            chan = key and first != 8 and first != 16
            if tok or chan:
                _pass(x, r0, C, W, sC, tok, chan, keys, tlo, thi, lo_c, hi_c, clo, chi)
        elif not key:
            base = _v_base(tlo, thi, W, _pass(x, r0, C, W, sC, True, False, keys, tlo, thi, lo_c, hi_c, clo, chi))
            err[0], err[1], err[2], err[3] = base / 3.0, base / 7.0, base / 15.0, base / 255.0
        else:
            _pass(x, r0, C, W, sC, False, True, keys, tlo, thi, lo_c, hi_c, clo, chi)
            q2 = _squared_queries(x, r0, sC, W, step, nq)
            base = kap_pc * _k_channel_sum(q2, clo, chi, n_head) / (n_head * nq)
            err[0], err[1], err[2] = base / 3.0, base / 7.0, base / 15.0
            if has8 and (err[2] > thr or not has4):
                _pass(x, r0, C, W, sC, True, False, keys, tlo, thi, lo_c, hi_c, clo, chi)
                err[3] = kap_q8 / 255.0 * _k_q8_sum(q2, tlo, thi, n_head) / (n_head * nq)
        b = first
        if not fixed:
            b = np.uint8(16)
            for a in allowed:
                if a == 16 or err[_col(a)] <= thr:
                    b = a
                    break
        pc = key and (b == 2 or b == 3 or b == 4)
        bits[i] = b
        pcs[i] = pc
        p0 = i * par_max
        if b != 16:
            if pc:
                _params(clo.reshape(-1), chi.reshape(-1), b, zero[p0 : p0 + gc * W], scale[p0 : p0 + gc * W])
            else:
                _params(tlo.reshape(-1), thi.reshape(-1), b, zero[p0 : p0 + C * gt], scale[p0 : p0 + C * gt])
        encode_layer(x, i, C, W, sL, sC, b, pc, zero, scale, p0, codes, i * code_max)


@njit(nogil=True, cache=True)
def _compact(buf, stride, offs, out):
    """Layer i's ``offs[i+1] - offs[i]`` leading items of ``buf[i * stride:]``, packed."""
    for i in range(len(offs) - 1):
        n = offs[i + 1] - offs[i]
        src = buf[i * stride : i * stride + n]
        dst = out[offs[i] : offs[i] + n]
        for k in range(n):
            dst[k] = src[k]


class _Scratch(threading.local):
    """Per-thread buffers reused across seals: a fresh multi-MB array costs its page faults."""

    def __init__(self) -> None:
        self.codes = np.empty(0, np.uint8)
        self.params = np.empty(0, np.uint16)

    def get(self, n_codes: int, n_params: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if len(self.codes) < n_codes:
            self.codes = np.empty(n_codes, np.uint8)
        if len(self.params) < 2 * n_params:
            self.params = np.empty(2 * n_params, np.uint16)
        return self.codes[:n_codes], self.params[:n_params], self.params[n_params : 2 * n_params]


_SCRATCH = _Scratch()


def seal_cpu(
    x: np.ndarray,
    allowed: np.ndarray,
    fixed: bool,
    threshold: float,
    key: bool,
    n_head_kv: int = 1,
    calib: tuple[float, float] = (1.0, 1.0),
) -> SealedRun:
    a = _check(x, allowed, key, n_head_kv)
    L, C, W = x.shape
    if L == 0 or C == 0 or W == 0:
        return seal_ref(x, a, fixed, threshold, key, n_head_kv, calib)
    flat, sL, sC = kb._flat_or_copy(x)
    gt, gc = -(-W // GROUP_TOKEN), -(-C // GROUP_CHANNEL)
    code_max = C * W * 2
    par_max = max(C * gt, gc * W)
    codes, zero, scale = _SCRATCH.get(L * code_max, L * par_max)
    bits = np.empty(L, np.uint8)
    pc = np.empty(L, np.bool_)
    errors = np.empty((L, 5), np.float64)
    kappa = _kappa(C, W // n_head_kv)
    _seal_cpu(
        flat,
        L,
        C,
        W,
        sL,
        sC,
        key,
        a,
        fixed,
        float(threshold),
        n_head_kv,
        kappa / calib[0],
        kappa / calib[1],
        code_max,
        par_max,
        bits,
        pc,
        codes,
        zero,
        scale,
        errors,
    )
    code_off, param_off, _ = kb.offsets(bits, pc, C, W)
    out_codes = np.empty(int(code_off[-1]), np.uint8)
    _compact(codes, code_max, code_off, out_codes)
    out_zero = np.empty(int(param_off[-1]), np.uint16)
    out_scale = np.empty(int(param_off[-1]), np.uint16)
    _compact(zero, par_max, param_off, out_zero)
    _compact(scale, par_max, param_off, out_scale)
    return SealedRun(bits, pc, out_codes, out_zero.view(np.float16), out_scale.view(np.float16), errors)


def seal(
    x: np.ndarray,
    allowed: np.ndarray,
    fixed: bool,
    threshold: float,
    key: bool,
    n_head_kv: int = 1,
    calib: tuple[float, float] = (1.0, 1.0),
) -> SealedRun:
    """Every layer of ``x`` ([L, cells, width] f16 bits, any strides) in the first format of
    ``allowed`` (bits, cheapest first; 16 always passes) whose estimated error is at most
    ``threshold`` (``fixed``: the first, no estimate); ``key``: K (per-channel 2-4 bits,
    errors through attention over ``n_head_kv`` heads) or V."""
    return fastest("kv_seal.seal", x.shape, seal_cpu, seal_cuda)(x, allowed, fixed, threshold, key, n_head_kv, calib)
