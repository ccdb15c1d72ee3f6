"""Read a GGUF file's header (metadata and tensor table) without loading weights.

Our own small reader rather than ``gguf.GGUFReader``: it reads only the header, so it is
instant on a 20 GB file, works on metadata-only files (used to test fit plans for big
shapes), and tells a truncated file from a wrong one with a one-line message.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from localsym.errors import BadModelFile

GGUF_MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


class ArrayLen(int):
    """Stands in for a big metadata array that was skipped: its length only."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne[0] first
    ggml_type: int
    offset: int  # from the start of the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class GGUFHeader:
    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorInfo]
    data_offset: int
    file_size: int
    _by_name: dict[str, TensorInfo] = field(default_factory=dict, repr=False)

    def tensor(self, name: str) -> TensorInfo | None:
        if not self._by_name:
            self._by_name = {t.name: t for t in self.tensors}
        return self._by_name.get(name)

    @property
    def has_weights(self) -> bool:
        """True when the file holds every tensor's bytes (not a metadata-only file)."""
        end = max((t.offset + t.nbytes for t in self.tensors), default=0)
        return self.data_offset + end <= self.file_size


# Bounds that no real file comes near; past them a header is corrupt or hostile.
MAX_TENSORS = 1 << 20  # the biggest models have a few thousand
MAX_KEYS = 1 << 20
MAX_ARRAY_NESTING = 2  # an array of arrays at most (llama.cpp itself reads no nested array)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_TENSOR_NAME = 63  # GGML_MAX_NAME less its NUL
MAX_TENSOR_ELEMENTS = 1 << 48  # 281 T elements: the biggest tensors of real models hold a few G
MAX_ALIGNMENT = 1 << 30
_MIN_VALUE_BYTES = {t: struct.calcsize(f) for t, f in _SCALARS.items()} | {_STRING: 8, _ARRAY: 12}
_MIN_KV_BYTES = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset


def _quant(ggml_type: int) -> tuple[int, int] | None:
    """(elements per block, bytes per block) of a ggml type, None when unknown."""
    try:
        return GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        return None


class _Reader:
    """Walks the header in a memory map: unpack_from is far faster than file reads
    for the 100K+ strings of a tokenizer's vocabulary. Every length is checked against the
    bytes left before anything is read or allocated, so no count in the file can make us
    read past its end, allocate beyond its size or recurse without bound."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.where = "the header"  # named in messages: a key or a tensor

    def fail(self, problem: str) -> NoReturn:
        raise BadModelFile(f"{self.path}: {problem}")

    def need(self, n: int, what: str) -> None:
        left = len(self.buf) - self.pos
        if n > left:
            if n > len(self.buf):
                self.fail(f"corrupt GGUF header ({self.where}: {what} needs {n} bytes, more than the whole file)")
            self.fail(f"truncated GGUF header ({self.where}: {what} needs {n} bytes at offset {self.pos}, {left} left)")

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, "a field")
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def read(self, n: int, what: str) -> bytes:
        self.need(n, what)
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def string(self) -> str:
        n = self.unpack("<Q")
        return self.read(n, "a string").decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype != _ARRAY:
            self.fail(f"corrupt GGUF header ({self.where}: unknown value type {vtype})")
        if depth >= MAX_ARRAY_NESTING:
            self.fail(f"corrupt GGUF header ({self.where}: arrays nested more than {MAX_ARRAY_NESTING} deep)")
        etype = self.unpack("<I")
        count = self.unpack("<Q")
        if etype not in _MIN_VALUE_BYTES:
            self.fail(f"corrupt GGUF header ({self.where}: array of unknown value type {etype})")
        self.need(count * _MIN_VALUE_BYTES[etype], f"an array of {count}")
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            raw = self.read(struct.calcsize(fmt) * count, f"an array of {count}")
            if not keep:
                return ArrayLen(count)
            return list(struct.unpack(f"<{count}{fmt[1:]}", raw))
        if etype == _STRING and not keep:
            for _ in range(count):
                n = self.unpack("<Q")
                self.need(n, "a string")
                self.pos += n
            return ArrayLen(count)
        return [self.value(etype, keep, depth + 1) for _ in range(count)]


def read_header(path: str | Path, vocab: bool = False) -> GGUFHeader:
    """Parse the header; raise BadModelFile with a one-line reason on anything wrong.

    Big arrays (the tokenizer's vocabulary, scores, merges) come back as ``ArrayLen``
    unless ``vocab`` is true: reading a header is then instant. A metadata-only file (tensor
    table, no tensor bytes) is a valid header: ``check_complete`` is what refuses it for a run.
    """
    path = Path(path)
    if not path.exists():
        raise BadModelFile(f"{path}: no such file")
    if not path.is_file():
        raise BadModelFile(f"{path}: not a regular file")
    try:
        size = path.stat().st_size
        if size < 24:
            raise BadModelFile(f"{path}: not a GGUF file")
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _parse(_Reader(buf, path), size, vocab)
    except OSError as e:
        raise BadModelFile(f"{path}: cannot read ({e.strerror or e})") from None
    except (struct.error, ValueError, OverflowError, MemoryError, RecursionError) as e:
        raise BadModelFile(f"{path}: corrupt GGUF header ({type(e).__name__}: {str(e)[:80]})") from None


def _parse(r: _Reader, size: int, vocab: bool) -> GGUFHeader:
    if r.read(4, "the magic") != GGUF_MAGIC:
        r.fail("not a GGUF file")
    version = r.unpack("<I")
    if version not in (2, 3):
        if int.from_bytes(version.to_bytes(4, "little"), "big") in (2, 3):
            r.fail("big-endian GGUF (not supported)")
        r.fail(f"unsupported GGUF version {version}")
    n_tensors = r.unpack("<Q")
    n_kv = r.unpack("<Q")
    if n_tensors > MAX_TENSORS or n_kv > MAX_KEYS:
        r.fail(f"corrupt GGUF header ({n_tensors} tensors and {n_kv} keys: absurd counts)")
    need = n_tensors * _MIN_TENSOR_BYTES + n_kv * _MIN_KV_BYTES
    if need > size - r.pos:  # a file cut short, or counts no file of this size can hold
        r.fail(
            f"truncated GGUF header ({n_tensors} tensors and {n_kv} keys need {need} bytes or more, "
            f"{size - r.pos} left)"
        )
    if n_tensors == 0:
        r.fail("no tensors (a vocabulary-only or empty GGUF, not a model)")
    meta: dict[str, Any] = {}
    for i in range(n_kv):
        r.where = f"key #{i}"
        key = r.string()
        r.where = f"key {key[:64]!r}"
        if key in meta:
            r.fail(f"corrupt GGUF header (duplicate {r.where})")
        keep = vocab or not key.startswith("tokenizer.ggml.")
        meta[key] = r.value(r.unpack("<I"), keep)
    align = meta.get("general.alignment", DEFAULT_ALIGNMENT)
    if type(align) is not int or not 0 < align <= MAX_ALIGNMENT or align & (align - 1):
        r.fail(f"corrupt GGUF header (general.alignment is {align!r}, not a power of two)")
    tensors: list[TensorInfo] = []
    names: set[str] = set()
    expected = 0  # llama.cpp's rule: tensors in order, each at the padded end of the one before
    for i in range(n_tensors):
        r.where = f"tensor #{i}"
        name = r.string()
        r.where = f"tensor {name[:64]!r}"
        if len(name.encode()) > MAX_TENSOR_NAME:
            r.fail(f"corrupt GGUF tensor table ({r.where}: name longer than {MAX_TENSOR_NAME} bytes)")
        if name in names:
            r.fail(f"corrupt GGUF tensor table (duplicate {r.where})")
        names.add(name)
        n_dims = r.unpack("<I")
        if n_dims > MAX_DIMS:
            r.fail(f"corrupt GGUF tensor table ({r.where}: {n_dims} dimensions)")
        shape = tuple(r.unpack("<Q") for _ in range(n_dims))
        n = 1
        for d in shape:
            n *= d
        if n > MAX_TENSOR_ELEMENTS or any(d > MAX_TENSOR_ELEMENTS for d in shape):
            r.fail(f"corrupt GGUF tensor table ({r.where}: shape {list(shape)})")
        ggml_type = r.unpack("<I")
        q = _quant(ggml_type)
        if q is None:
            r.fail(f"corrupt GGUF tensor table ({r.where}: unknown tensor type {ggml_type})")
        if shape and shape[0] % q[0]:
            r.fail(
                f"corrupt GGUF tensor table ({r.where}: row of {shape[0]} not a multiple of its type's block of {q[0]})"
            )
        offset = r.unpack("<Q")
        if offset != expected:
            r.fail(f"corrupt GGUF tensor table ({r.where}: data at offset {offset}, expected {expected})")
        t = TensorInfo(name, shape, ggml_type, offset, n // q[0] * q[1])
        expected += (t.nbytes + align - 1) // align * align
        tensors.append(t)
    data_offset = (r.pos + align - 1) // align * align
    return GGUFHeader(r.path, version, meta, tensors, data_offset, size)


def check_complete(header: GGUFHeader) -> None:
    """Refuse a file whose tensor data is cut short (an interrupted copy or download)."""
    if not header.has_weights:
        end = header.data_offset + max((t.offset + t.nbytes for t in header.tensors), default=0)
        raise BadModelFile(f"{header.path}: truncated GGUF ({header.file_size} of {end} bytes present)")
