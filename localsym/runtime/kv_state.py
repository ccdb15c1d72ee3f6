"""llama.cpp's sequence-state blob (state version 3) <-> numpy arrays, and back.

Layout (native endian, no padding), as written by ``llama_state_seq_get_data``:
``u32 magic, i32 seq_id``; then per KV cache (iSWA models: the full cache, then the SWA
cache) ``u32 n_stream``; per stream ``u32 cell_count``; per cell ``i32 pos, u32 n_seq_id,
i32 seq_id * n``; then ``u32 v_trans, u32 n_layer``; K per layer ``i32 type, u64 row_size``
and ``cell_count`` rows; V per layer the same when ``v_trans == 0``, else ``i32 type,
u32 el_size, u32 n_embd_v_gqa`` and ``n_embd_v_gqa`` rows of ``cell_count`` elements.
We always hold V token-major (one row per cell) and transpose on the way in and out.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from localsym.errors import LocalsymError

STATE_MAGIC = 0xAF143CD8  # 'ggsq' as llama.cpp writes it
STATE_VERSION = 3
GGML_F32, GGML_F16, GGML_BF16 = 0, 1, 30
_DTYPES: dict[int, np.dtype] = {GGML_F32: np.dtype("<f4"), GGML_F16: np.dtype("<f2"), GGML_BF16: np.dtype("<u2")}


class BlobError(LocalsymError):
    """A KV state blob that does not parse, or does not match the live context."""


@dataclass
class KVStream:
    positions: np.ndarray  # int32 [cells]
    seq_ids: list[tuple[int, ...]]
    v_trans: bool
    k_types: list[int]
    v_types: list[int]
    k: list[np.ndarray]  # per layer, [cells, row] (f16/f32 as floats, other types raw uint8)
    v: list[np.ndarray]  # per layer, [cells, n_embd_v] token-major whatever v_trans says

    @property
    def n_cells(self) -> int:
        return len(self.positions)

    @property
    def n_layer(self) -> int:
        return len(self.k)


@dataclass
class SeqState:
    seq_id: int
    caches: list[list[KVStream]] = field(default_factory=list)  # caches -> streams

    def streams(self) -> list[KVStream]:
        return [s for c in self.caches for s in c]

    @property
    def n_cells(self) -> int:
        return self.caches[0][0].n_cells if self.caches and self.caches[0] else 0


class _Cursor:
    def __init__(self, buf: bytes | bytearray | np.ndarray) -> None:
        self.buf = buf.data if isinstance(buf, np.ndarray) else memoryview(buf)
        self.pos = 0

    def take(self, fmt: str):
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise BlobError("KV state blob is truncated")
        v = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v if len(v) > 1 else v[0]

    def array(self, dtype: np.dtype, count: int) -> np.ndarray:
        nbytes = dtype.itemsize * count
        if self.pos + nbytes > len(self.buf):
            raise BlobError("KV state blob is truncated")
        a = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += nbytes
        return a


def _row_dtype(t: int) -> np.dtype:
    return _DTYPES.get(t, np.dtype(np.uint8))


_CELL1 = np.dtype([("pos", "<i4"), ("n", "<u4"), ("seq", "<i4")])


def _parse_cells(c: _Cursor, cell_count: int, cell_ext: int) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Cells of one stream; a block's cells all belong to one sequence, read in one go."""
    if not cell_ext and c.pos + cell_count * _CELL1.itemsize <= len(c.buf):
        cells = np.frombuffer(c.buf, _CELL1, count=cell_count, offset=c.pos)
        if cell_count and (cells["n"] == 1).all():
            c.pos += cell_count * _CELL1.itemsize
            seqs = cells["seq"]
            first = int(seqs[0])
            ids: list[tuple[int, ...]] = [(first,)] * cell_count if (seqs == first).all() else [(int(s),) for s in seqs]
            return cells["pos"].astype(np.int32), ids
    positions = np.empty(cell_count, np.int32)
    seq_ids = []
    for i in range(cell_count):
        positions[i] = c.take("<i")
        n = c.take("<I")
        if cell_ext:
            c.pos += cell_ext
        if n > 256:
            raise BlobError("KV state blob is corrupt (sequence ids)")
        seq_ids.append(tuple(c.take("<i") for _ in range(n)))
    return positions, seq_ids


def _parse_stream(c: _Cursor, cell_ext: int) -> KVStream:
    cell_count = c.take("<I")
    if cell_count > 1 << 24:
        raise BlobError("KV state blob is corrupt (cell count)")
    positions, seq_ids = _parse_cells(c, cell_count, cell_ext)
    v_trans = bool(c.take("<I"))
    n_layer = c.take("<I")
    if n_layer > 4096:
        raise BlobError("KV state blob is corrupt (layer count)")
    k_types, v_types, ks, vs = [], [], [], []
    for _ in range(n_layer):
        t, row_size = c.take("<iQ")
        dt = _row_dtype(t)
        k_types.append(t)
        ks.append(c.array(dt, row_size * cell_count // dt.itemsize).reshape(cell_count, -1))
    for _ in range(n_layer):
        if not v_trans:
            t, row_size = c.take("<iQ")
            dt = _row_dtype(t)
            vs.append(c.array(dt, row_size * cell_count // dt.itemsize).reshape(cell_count, -1))
        else:
            t, el_size, n_embd = c.take("<iII")
            dt = _row_dtype(t)
            if dt.itemsize != el_size:
                raise BlobError(f"transposed V of type {t} is not supported")
            vs.append(c.array(dt, n_embd * cell_count).reshape(n_embd, cell_count).T)
        v_types.append(t)
    return KVStream(positions, seq_ids, v_trans, k_types, v_types, ks, vs)


def parse(blob: bytes | bytearray | np.ndarray, n_caches: int = 1, cell_ext: int = 0) -> SeqState:
    """Parse a blob; ``n_caches`` is 2 for iSWA models (full cache, then SWA cache)."""
    c = _Cursor(blob)
    magic, seq_id = c.take("<Ii")
    if magic != STATE_MAGIC:
        raise BlobError(f"not a llama.cpp state v{STATE_VERSION} blob (magic {magic:#x})")
    state = SeqState(seq_id)
    for _ in range(n_caches):
        n_stream = c.take("<I")
        if n_stream > 64:
            raise BlobError("KV state blob is corrupt (stream count)")
        state.caches.append([_parse_stream(c, cell_ext) for _ in range(n_stream)])
    if c.pos != len(blob):
        raise BlobError(
            f"KV state blob has {len(blob) - c.pos} unexpected trailing bytes "
            f"(wrong cache count or an unsupported model layout)"
        )
    return state


def _write_stream(out: list[bytes], s: KVStream, cell_ext: int) -> None:
    out.append(struct.pack("<I", s.n_cells))
    ext = b"\0" * cell_ext
    for pos, ids in zip(s.positions.tolist(), s.seq_ids):
        out.append(struct.pack("<iI", pos, len(ids)) + ext + struct.pack(f"<{len(ids)}i", *ids))
    out.append(struct.pack("<II", int(s.v_trans), s.n_layer))
    for t, k in zip(s.k_types, s.k):
        k = np.ascontiguousarray(k, dtype=_row_dtype(t))
        out.append(struct.pack("<iQ", t, k.shape[1] * k.itemsize))
        out.append(k.tobytes())
    for t, v in zip(s.v_types, s.v):
        dt = _row_dtype(t)
        if not s.v_trans:
            v = np.ascontiguousarray(v, dtype=dt)
            out.append(struct.pack("<iQ", t, v.shape[1] * v.itemsize))
            out.append(v.tobytes())
        else:
            vt = np.ascontiguousarray(np.asarray(v, dtype=dt).T)
            out.append(struct.pack("<iII", t, dt.itemsize, vt.shape[0]))
            out.append(vt.tobytes())


def write(state: SeqState, cell_ext: int = 0) -> bytes:
    out = [struct.pack("<Ii", STATE_MAGIC, state.seq_id)]
    for cache in state.caches:
        out.append(struct.pack("<I", len(cache)))
        for s in cache:
            _write_stream(out, s, cell_ext)
    return b"".join(out)


def check_compatible(state: SeqState, reference: SeqState) -> None:
    """Refuse a blob whose layout differs from one taken from the live context."""
    if len(state.caches) != len(reference.caches):
        raise BlobError("KV blob has a different number of caches than the live context")
    for a, b in zip(state.streams(), reference.streams()):
        if a.n_layer != b.n_layer:
            raise BlobError(f"KV blob has {a.n_layer} layers, the live context {b.n_layer}")
        if a.k_types != b.k_types or a.v_types != b.v_types:
            raise BlobError("KV blob cache types differ from the live context's (-ctk/-ctv)")
        if a.v_trans != b.v_trans:
            raise BlobError("KV blob V layout differs from the live context's (-fa)")
        for ka, kb in zip(a.k, b.k):
            if ka.shape[1:] != kb.shape[1:]:
                raise BlobError("KV blob row sizes differ from the live context's")


# -- whole-block views and blobs built in place ----------------------------------------------


def stacked(arrays: Sequence[np.ndarray]) -> list[tuple[int, int, np.ndarray]]:
    """Runs ``(first, stop, view)`` of per-layer arrays that share shape, dtype and strides
    and sit at a fixed distance in memory (a blob's layers do), each as one strided
    [layers, cells, width] view: one kernel call then covers a whole run."""
    runs, i, n = [], 0, len(arrays)
    ptr = [a.ctypes.data for a in arrays]
    while i < n:
        a = arrays[i]
        j, delta = i + 1, 0
        while j < n:
            b = arrays[j]
            d = ptr[j] - ptr[j - 1]
            if b.shape != a.shape or b.dtype != a.dtype or b.strides != a.strides or d <= 0 or (delta and d != delta):
                break
            delta = d
            j += 1
        view = np.lib.stride_tricks.as_strided(
            a, shape=(j - i, *a.shape), strides=(delta, *a.strides), writeable=a.flags.writeable
        )
        runs.append((i, j, view))
        i = j
    return runs


@dataclass(frozen=True)
class StreamShape:
    """What a stream's part of a blob holds besides its cells: per-layer types and row sizes."""

    v_trans: bool
    k_types: tuple[int, ...]
    v_types: tuple[int, ...]
    k_row_bytes: tuple[int, ...]
    v_row_bytes: tuple[int, ...]  # a cell's V bytes (n_embd_v * element size when transposed)

    @classmethod
    def of(cls, s: KVStream) -> StreamShape:
        return cls(
            s.v_trans,
            tuple(s.k_types),
            tuple(s.v_types),
            tuple(k.shape[1] * k.itemsize for k in s.k),
            tuple(v.shape[1] * v.itemsize for v in s.v),
        )

    def as_dict(self) -> dict:
        return {
            "v_trans": self.v_trans,
            "k_types": list(self.k_types),
            "v_types": list(self.v_types),
            "k_row_bytes": list(self.k_row_bytes),
            "v_row_bytes": list(self.v_row_bytes),
        }

    @classmethod
    def from_dict(cls, d: dict) -> StreamShape:
        return cls(
            bool(d["v_trans"]),
            tuple(d["k_types"]),
            tuple(d["v_types"]),
            tuple(d["k_row_bytes"]),
            tuple(d["v_row_bytes"]),
        )


def new_blob(
    seq_id: int, positions: np.ndarray, shapes: Sequence[Sequence[StreamShape]]
) -> tuple[np.ndarray, SeqState]:
    """A state blob for cells at ``positions`` of sequence ``seq_id``, laid out as ``shapes``
    (caches -> streams), with its K and V left to fill: the returned state's arrays are
    writable views into the buffer, which then goes to llama.cpp as it is (no copy)."""
    n = len(positions)
    size = 8
    for cache in shapes:
        size += 4
        for sh in cache:
            size += 4 + n * _CELL1.itemsize + 8 + 12 * (len(sh.k_types) + len(sh.v_types))
            size += n * (sum(sh.k_row_bytes) + sum(sh.v_row_bytes))
    buf = np.empty(size, np.uint8)  # every byte is written below or by the caller: no zero fill
    mv = buf.data
    struct.pack_into("<Ii", mv, 0, STATE_MAGIC, seq_id)
    off = 8
    state = SeqState(seq_id)
    for cache in shapes:
        struct.pack_into("<I", mv, off, len(cache))
        off += 4
        streams = []
        for sh in cache:
            struct.pack_into("<I", mv, off, n)
            off += 4
            cells = np.frombuffer(buf, _CELL1, count=n, offset=off)
            cells["pos"], cells["n"], cells["seq"] = positions, 1, seq_id
            off += n * _CELL1.itemsize
            struct.pack_into("<II", mv, off, int(sh.v_trans), len(sh.k_types))
            off += 8
            ks, vs = [], []
            for t, rb in zip(sh.k_types, sh.k_row_bytes):
                dt = _row_dtype(t)
                struct.pack_into("<iQ", mv, off, t, rb)
                ks.append(np.frombuffer(buf, dt, count=n * rb // dt.itemsize, offset=off + 12).reshape(n, -1))
                off += 12 + n * rb
            for t, rb in zip(sh.v_types, sh.v_row_bytes):
                dt = _row_dtype(t)
                if sh.v_trans:
                    struct.pack_into("<iII", mv, off, t, dt.itemsize, rb // dt.itemsize)
                    vs.append(np.frombuffer(buf, dt, count=n * rb // dt.itemsize, offset=off + 12).reshape(-1, n).T)
                else:
                    struct.pack_into("<iQ", mv, off, t, rb)
                    vs.append(np.frombuffer(buf, dt, count=n * rb // dt.itemsize, offset=off + 12).reshape(n, -1))
                off += 12 + n * rb
            streams.append(
                KVStream(
                    np.asarray(positions, np.int32),
                    [(seq_id,)] * n,
                    sh.v_trans,
                    list(sh.k_types),
                    list(sh.v_types),
                    ks,
                    vs,
                )
            )
        state.caches.append(streams)
    assert off == size
    return buf, state
