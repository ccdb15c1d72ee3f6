"""A small versioned, checksummed file of named numpy arrays plus JSON metadata.

Layout: ``b"LSYMBLK\\0"``, ``u32 format_version``, ``u32 header_len``, a JSON header (the
caller's metadata, the array table and the payload's sha256), then the payload with each
array 64-byte aligned. Writes go to a temp file that is fsynced and renamed into place,
so a reader sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from localsym.errors import LocalsymError

MAGIC = b"LSYMBLK\0"
FORMAT_VERSION = 1
_ALIGN = 64


class CorruptFile(LocalsymError):
    """A file that fails its magic, version, structure or checksum test."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> int:
    """Write atomically; returns the file's size in bytes."""
    table, chunks, offset = [], [], 0
    h = hashlib.sha256()
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        raw = a.tobytes()
        table.append({"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset, "nbytes": len(raw)})
        pad = b"\0" * _pad(len(raw))
        chunks += [raw, pad]
        h.update(raw)
        h.update(pad)
        offset += len(raw) + len(pad)
    header = json.dumps({"meta": meta, "arrays": table, "payload_bytes": offset,
                         "payload_sha256": h.hexdigest()}, separators=(",", ":")).encode()
    head = MAGIC + struct.pack("<II", FORMAT_VERSION, len(header)) + header
    head += b"\0" * _pad(len(head))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(head)
        for c in chunks:
            f.write(c)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(head) + offset


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify; raise CorruptFile on any damage."""
    try:
        data = bytearray(path.read_bytes())  # writable: kernels get one array type
    except OSError as e:
        raise CorruptFile(f"{path}: unreadable ({e.strerror})") from None
    if len(data) < 16 or data[:8] != MAGIC:
        raise CorruptFile(f"{path}: not a localsym block file")
    version, hlen = struct.unpack_from("<II", data, 8)
    if version != FORMAT_VERSION:
        raise CorruptFile(f"{path}: block format v{version}, this localsym reads v{FORMAT_VERSION}")
    try:
        header = json.loads(data[16 : 16 + hlen])
    except (ValueError, UnicodeDecodeError):
        raise CorruptFile(f"{path}: damaged header") from None
    start = 16 + hlen
    start += _pad(start)
    payload = memoryview(data)[start:]
    if len(payload) != header.get("payload_bytes"):
        raise CorruptFile(f"{path}: truncated ({len(payload)} of {header.get('payload_bytes')} payload bytes)")
    if hashlib.sha256(payload).hexdigest() != header["payload_sha256"]:
        raise CorruptFile(f"{path}: checksum mismatch")
    arrays = {}
    for t in header["arrays"]:
        a = np.frombuffer(payload, dtype=np.dtype(t["dtype"]), count=t["nbytes"] // np.dtype(t["dtype"]).itemsize,
                          offset=t["offset"])
        arrays[t["name"]] = a.reshape(t["shape"])
    return header["meta"], arrays


def read_meta(path: Path) -> dict[str, Any]:
    """The caller's metadata alone, without reading or verifying the payload (for reports;
    anything that uses the arrays goes through ``read``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            if len(head) < 16 or head[:8] != MAGIC:
                raise CorruptFile(f"{path}: not a localsym block file")
            version, hlen = struct.unpack_from("<II", head, 8)
            if version != FORMAT_VERSION:
                raise CorruptFile(f"{path}: block format v{version}, this localsym reads v{FORMAT_VERSION}")
            return json.loads(f.read(hlen))["meta"]
    except OSError as e:
        raise CorruptFile(f"{path}: unreadable ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError, KeyError):
        raise CorruptFile(f"{path}: damaged header") from None
