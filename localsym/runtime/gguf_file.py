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
from typing import Any

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

    @property
    def type_name(self) -> str:
        try:
            return GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return f"type{self.ggml_type}"


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


def _nbytes(ggml_type: int, shape: tuple[int, ...]) -> int:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (ValueError, KeyError):
        raise BadModelFile(f"unknown tensor type {ggml_type}") from None
    n = 1
    for d in shape:
        n *= d
    return n // block * size


class _Reader:
    """Walks the header in a memory map: unpack_from is far faster than file reads
    for the 100K+ strings of a tokenizer's vocabulary."""

    def __init__(self, buf: mmap.mmap, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise BadModelFile(f"{self.path}: truncated GGUF header")
        v = struct.unpack_from(fmt, self.buf, self.pos)[0]
        self.pos += size
        return v

    def read(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise BadModelFile(f"{self.path}: truncated GGUF header")
        b = self.buf[self.pos : self.pos + n]
        self.pos += n
        return b

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise BadModelFile(f"{self.path}: corrupt GGUF header (string of {n} bytes)")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, keep: bool = True) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype = self.unpack("<I")
            count = self.unpack("<Q")
            if count > 1 << 28:
                raise BadModelFile(f"{self.path}: corrupt GGUF header (array of {count})")
            if etype in _SCALARS:
                fmt = _SCALARS[etype]
                raw = self.read(struct.calcsize(fmt) * count)
                if not keep:
                    return ArrayLen(count)
                return list(struct.unpack("<" + fmt[1:] * count, raw)) if count else []
            if etype == _STRING and not keep:
                for _ in range(count):
                    self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
                if self.pos > len(self.buf):
                    raise BadModelFile(f"{self.path}: truncated GGUF header")
                return ArrayLen(count)
            return [self.value(etype) for _ in range(count)]
        raise BadModelFile(f"{self.path}: corrupt GGUF header (value type {vtype})")


def read_header(path: str | Path, vocab: bool = False) -> GGUFHeader:
    """Parse the header; raise BadModelFile with a one-line reason on anything wrong.

    Big arrays (the tokenizer's vocabulary, scores, merges) come back as ``ArrayLen``
    unless ``vocab`` is true: reading a header is then instant.
    """
    path = Path(path)
    if not path.is_file():
        raise BadModelFile(f"{path}: no such file")
    try:
        size = path.stat().st_size
        if size < 24:
            raise BadModelFile(f"{path}: not a GGUF file")
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            r = _Reader(buf, path)
            if r.read(4) != GGUF_MAGIC:
                raise BadModelFile(f"{path}: not a GGUF file")
            version = r.unpack("<I")
            if version not in (2, 3):
                raise BadModelFile(f"{path}: unsupported GGUF version {version}")
            n_tensors = r.unpack("<Q")
            n_kv = r.unpack("<Q")
            if n_tensors > 1 << 24 or n_kv > 1 << 20:
                raise BadModelFile(f"{path}: corrupt GGUF header")
            meta: dict[str, Any] = {}
            for _ in range(n_kv):
                key = r.string()
                keep = vocab or not key.startswith("tokenizer.ggml.")
                meta[key] = r.value(r.unpack("<I"), keep)
            tensors = []
            for _ in range(n_tensors):
                name = r.string()
                n_dims = r.unpack("<I")
                if n_dims > 8:
                    raise BadModelFile(f"{path}: corrupt GGUF tensor table")
                shape = tuple(r.unpack("<Q") for _ in range(n_dims))
                ggml_type = r.unpack("<I")
                offset = r.unpack("<Q")
                tensors.append(TensorInfo(name, shape, ggml_type, offset, _nbytes(ggml_type, shape)))
            align = int(meta.get("general.alignment", DEFAULT_ALIGNMENT))
            data_offset = (r.pos + align - 1) // align * align
    except OSError as e:
        raise BadModelFile(f"{path}: cannot read ({e.strerror or e})") from None
    except (struct.error, ValueError) as e:
        raise BadModelFile(f"{path}: corrupt GGUF header ({e})") from None
    return GGUFHeader(path, version, meta, tensors, data_offset, size)


def check_complete(header: GGUFHeader) -> None:
    """Refuse a file whose tensor data is cut short (an interrupted copy or download)."""
    if not header.has_weights:
        end = header.data_offset + max(t.offset + t.nbytes for t in header.tensors)
        raise BadModelFile(
            f"{header.path}: truncated GGUF ({header.file_size} of {end} bytes present)"
        )
