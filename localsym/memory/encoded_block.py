"""A block's KV as the warm and cold tiers hold it: every layer in its own format, detached
from positions, written back into a llama.cpp state blob at any base position.

One encoding serves both tiers (the warm tier is a RAM cache of the cold files), so a block
restores to the same KV whichever tier it comes from, and sealing encodes once. Sealing
reads the state blob in place: the layers of a stream sit at a fixed stride in the blob, so
each of K and V is one strided [layers, cells, width] view, measured, given its formats
and encoded in one kernel call (``kernels_numba.kv_seal``). Restoring allocates the blob
and decodes every layer straight into it in one call per tensor.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kernels_numba import kv_block as kb
from kernels_numba.kv_seal import SealedRun
from localsym.memory import container
from localsym.memory import kv_quant as kq
from localsym.runtime import kv_state

F16 = kv_state.GGML_F16
RAW = 0  # ``bits`` of a layer kept as llama.cpp's own rows (f32, bf16 or quantized cache types)


@dataclass
class EncodedTensor:
    """Every layer of a block's K (or V): per-layer format, codes and group parameters
    one after another in layer order."""

    bits: np.ndarray  # uint8 [layers]: 2/3/4/8 codes, 16 f16 values, 0 raw rows
    per_channel: np.ndarray  # bool [layers]
    codes: np.ndarray  # uint8
    zero: np.ndarray  # float16, one per group
    scale: np.ndarray  # float16, one per group

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.zero.nbytes + self.scale.nbytes)

    def formats(self) -> list[str]:
        return ["raw" if b == RAW else kq.FMT_OF_BITS[int(b)] for b in self.bits]


@dataclass
class EncodedStream:
    shape: kv_state.StreamShape
    k: EncodedTensor
    v: EncodedTensor


@dataclass
class EncodedBlock:
    n_tokens: int
    streams: list[list[EncodedStream]]  # caches -> streams
    mix: dict[str, int]

    @property
    def nbytes(self) -> int:
        return sum(s.k.nbytes + s.v.nbytes for c in self.streams for s in c)

    @property
    def f16_bytes(self) -> int:
        """What this block's K and V take in an f16 cache (the bytes it stands for)."""
        return sum(
            self.n_tokens * (sum(s.shape.k_row_bytes) + sum(s.shape.v_row_bytes)) for c in self.streams for s in c
        )

    # -- from / to llama.cpp ------------------------------------------------------------------
    @classmethod
    def seal(
        cls, state: kv_state.SeqState, policy: kq.QuantPolicy, n_head_kv: int, floor: str | None = None
    ) -> EncodedBlock:
        mix: Counter[str] = Counter()
        caches = []
        for cache in state.caches:
            out = []
            for s in cache:
                k = _encode(s.k, s.k_types, lambda x: kq.seal_run(x, True, policy, n_head_kv, floor))
                v = _encode(s.v, s.v_types, lambda x: kq.seal_run(x, False, policy, n_head_kv, floor))
                mix.update(f"K:{f}" for f in k.formats() if f != "raw")
                mix.update(f"V:{f}" for f in v.formats() if f != "raw")
                out.append(EncodedStream(kv_state.StreamShape.of(s), k, v))
            caches.append(out)
        return cls(state.n_cells, caches, dict(mix))

    def to_blob(self, base_pos: int, seq_id: int) -> np.ndarray:
        """A state blob holding this block at positions base_pos .. base_pos + n - 1."""
        positions = np.arange(base_pos, base_pos + self.n_tokens, dtype=np.int32)
        buf, state = kv_state.new_blob(seq_id, positions, [[s.shape for s in c] for c in self.streams])
        for enc_cache, cache in zip(self.streams, state.caches):
            for e, s in zip(enc_cache, cache):
                _decode(e.k, s.k)
                _decode(e.v, s.v)
        return buf

    # -- cold file ----------------------------------------------------------------------------
    def save(self, path: Path, meta: dict) -> int:
        arrays: dict[str, np.ndarray] = {}
        layout = []
        for ci, cache in enumerate(self.streams):
            for si, s in enumerate(cache):
                layout.append({"cache": ci, "stream": si, "shape": s.shape.as_dict()})
                for kind, t in (("k", s.k), ("v", s.v)):
                    for field in ("bits", "per_channel", "codes", "zero", "scale"):
                        arrays[f"c{ci}.s{si}.{kind}.{field}"] = getattr(t, field)
        full = dict(
            meta,
            n_tokens=self.n_tokens,
            layout=layout,
            mix=self.mix,
            llama_state_version=kv_state.STATE_VERSION,
            kv_layout=kb.LAYOUT_VERSION,
        )
        return container.write(path, full, arrays)

    @classmethod
    def load(cls, path: Path) -> tuple[EncodedBlock, dict]:
        """Read and verify a block file; any inconsistency is ``CorruptFile``."""
        meta, arrays = container.read(path)
        if meta.get("llama_state_version") != kv_state.STATE_VERSION:
            raise container.CorruptFile(
                f"{path}: llama.cpp state v{meta.get('llama_state_version')}, expected v{kv_state.STATE_VERSION}"
            )
        if meta.get("kv_layout", 1) != kb.LAYOUT_VERSION:
            raise container.CorruptFile(
                f"{path}: KV codes in layout v{meta.get('kv_layout', 1)} (an older localsym), this one reads "
                f"v{kb.LAYOUT_VERSION}"
            )
        try:
            n = int(meta["n_tokens"])
            caches: list[list[EncodedStream]] = []
            for entry in meta["layout"]:
                ci, si = entry["cache"], entry["stream"]
                while len(caches) <= ci:
                    caches.append([])
                shape = kv_state.StreamShape.from_dict(entry["shape"])
                k, v = (
                    EncodedTensor(
                        *(arrays[f"c{ci}.s{si}.{kind}.{f}"] for f in ("bits", "per_channel", "codes", "zero", "scale"))
                    )
                    for kind in ("k", "v")
                )
                _check(k, shape.k_types, shape.k_row_bytes, n)
                _check(v, shape.v_types, shape.v_row_bytes, n)
                caches[ci].append(EncodedStream(shape, k, v))
        except (KeyError, TypeError, ValueError) as e:
            raise container.CorruptFile(f"{path}: inconsistent block layout ({e})") from None
        return cls(n, caches, meta.get("mix", {})), meta


def _runs(layers: list[np.ndarray], types: list[int]) -> list[tuple[int, int, np.ndarray | None]]:
    """Runs of f16 layers as [layers, cells, width] uint16 views; other layers one by one
    (None: kept raw)."""
    out: list[tuple[int, int, np.ndarray | None]] = []
    i = 0
    while i < len(layers):
        j = i
        while j < len(layers) and types[j] == F16:
            j += 1
        if j > i:
            out += [(i + a, i + b, view.view(np.uint16)) for a, b, view in kv_state.stacked(layers[i:j])]
            i = j
        else:
            out.append((i, i + 1, None))
            i += 1
    return out


def _encode(layers: list[np.ndarray], types: list[int], seal: Callable[[np.ndarray], SealedRun]) -> EncodedTensor:
    """Runs of f16 layers sealed in one call each; other cache types kept as their rows."""
    bits = np.zeros(len(layers), np.uint8)
    pc = np.zeros(len(layers), np.bool_)
    codes, zeros, scales = [], [], []
    for a, b, x in _runs(layers, types):
        if x is None:
            codes.append(np.ascontiguousarray(layers[a]).view(np.uint8).ravel())
            continue
        run = seal(x)
        bits[a:b], pc[a:b] = run.bits, run.per_channel
        codes.append(run.codes)
        zeros.append(run.zero)
        scales.append(run.scale)
    return EncodedTensor(bits, pc, _cat(codes, np.uint8), _cat(zeros), _cat(scales))


def _cat(parts: list[np.ndarray], dtype: type = np.float16) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _decode(t: EncodedTensor, layers: list[np.ndarray]) -> None:
    """Every layer of ``t`` into the blob's per-layer views (one kernel call per run)."""
    co = po = 0
    types = [F16 if b != RAW else -1 for b in t.bits]
    for a, b, out in _runs(layers, types):
        if out is None:
            dst = layers[a]
            dst[...] = t.codes[co : co + dst.nbytes].view(dst.dtype).reshape(dst.shape)
            co += dst.nbytes
            continue
        code_off, param_off, _ = kb.offsets(t.bits[a:b], t.per_channel[a:b], out.shape[1], out.shape[2])
        nc, npar = int(code_off[-1]), int(param_off[-1])
        kb.decode(
            t.codes[co : co + nc], t.bits[a:b], t.per_channel[a:b], t.zero[po : po + npar], t.scale[po : po + npar], out
        )
        co, po = co + nc, po + npar


def _check(t: EncodedTensor, types: tuple[int, ...], row_bytes: tuple[int, ...], n: int) -> None:
    """A tensor whose sizes match its layout exactly (a damaged header fails here)."""
    L = len(types)
    if t.bits.shape != (L,) or t.per_channel.shape != (L,) or t.bits.dtype != np.uint8:
        raise ValueError("layer table")
    if t.codes.dtype != np.uint8 or t.zero.dtype != np.float16 or t.scale.dtype != np.float16:
        raise ValueError("array types")
    codes = params = 0
    for i in range(L):
        b = int(t.bits[i])
        if b == RAW or types[i] != F16:
            if b != RAW and types[i] != F16:
                raise ValueError(f"layer {i}: a quantized copy of a non-f16 cache")
            codes += n * row_bytes[i]
            continue
        if b not in kb.BITS:
            raise ValueError(f"layer {i}: {b} bits")
        nb, ng = kb.layer_sizes(b, bool(t.per_channel[i]), n, row_bytes[i] // 2)
        codes, params = codes + nb, params + ng
    if len(t.codes) != codes or len(t.zero) != params or len(t.scale) != params:
        raise ValueError("payload sizes")
