"""A small versioned, checksummed file of named numpy arrays plus JSON metadata.

Layout: ``b"LSYMBLK\\0"``, ``u32 format_version``, ``u32 header_len``, the sha256 (32 bytes)
of everything after it, a JSON header (the caller's metadata and the array table), then the
payload with each array 64-byte aligned. One checksum covers header and payload, so a
changed dtype or offset is caught like a flipped payload bit. Writes go through
``atomic_write``: a temp file, fsynced and renamed into place, removed on any failure, so a
reader sees the old file or the new one, never half of one, and a full disk leaves nothing
behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from localsym.errors import BudgetError, LocalsymError

MAGIC = b"LSYMBLK\0"
FORMAT_VERSION = 2
_ALIGN = 64
_PREFIX = 16 + 32


class CorruptFile(LocalsymError):
    """A file that fails its magic, version, structure or checksum test."""


def _pad(n: int) -> int:
    return (-n) % _ALIGN


def atomic_write(path: Path, parts: Iterable[bytes | memoryview], sync: bool = True) -> int:
    """Write ``parts`` to ``path`` atomically; returns the bytes written. A full disk is a
    one-line ``BudgetError`` and leaves no temp file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # one name per thread: two sessions of a process may write the same block (content-
    # addressed: the same history) at once, and would truncate and rename each other's file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    n = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # sessions' text: the owner's alone
        with os.fdopen(fd, "wb") as f:
            for p in parts:
                n += f.write(p)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise BudgetError(
                f"cannot write {path}: {os.strerror(e.errno)}; free some disk space "
                f"(`localsym prune` removes blocks no session uses)"
            ) from None
        raise
    return n


def write(path: Path, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> int:
    """Write atomically; returns the file's size in bytes."""
    table, offset = [], 0
    chunks: list[bytes | memoryview] = []
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        raw = a.data.cast("B") if a.size else memoryview(b"")
        table.append(
            {"name": name, "dtype": a.dtype.str, "shape": list(a.shape), "offset": offset, "nbytes": raw.nbytes}
        )
        chunks += [raw, b"\0" * _pad(raw.nbytes)]
        offset += raw.nbytes + _pad(raw.nbytes)
    header = json.dumps({"meta": meta, "arrays": table, "payload_bytes": offset}, separators=(",", ":")).encode()
    header += b" " * _pad(_PREFIX + len(header))  # the payload starts aligned
    h = hashlib.sha256(header)
    for c in chunks:
        h.update(c)
    head = MAGIC + struct.pack("<II", FORMAT_VERSION, len(header)) + h.digest() + header
    return atomic_write(path, [head, *chunks])


def _header(path: Path, data: bytes | bytearray) -> tuple[int, dict]:
    if len(data) < _PREFIX or data[:8] != MAGIC:
        raise CorruptFile(f"{path}: not a localsym block file")
    version, hlen = struct.unpack_from("<II", data, 8)
    if version != FORMAT_VERSION:
        raise CorruptFile(f"{path}: block format v{version}, this localsym reads v{FORMAT_VERSION}")
    if _PREFIX + hlen > len(data):
        raise CorruptFile(f"{path}: truncated header")
    try:
        header = json.loads(data[_PREFIX : _PREFIX + hlen])
        if not isinstance(header, dict) or not isinstance(header.get("meta"), dict):
            raise ValueError
    except (ValueError, UnicodeDecodeError):
        raise CorruptFile(f"{path}: damaged header") from None
    return hlen, header


def read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read and verify; raise CorruptFile on any damage."""
    try:
        data = bytearray(path.read_bytes())  # writable: kernels get one array type
    except OSError as e:
        raise CorruptFile(f"{path}: unreadable ({e.strerror})") from None
    hlen, header = _header(path, data)
    if hashlib.sha256(memoryview(data)[_PREFIX:]).digest() != bytes(data[16:_PREFIX]):
        raise CorruptFile(f"{path}: checksum mismatch")
    payload = memoryview(data)[_PREFIX + hlen :]
    if len(payload) != header.get("payload_bytes"):
        raise CorruptFile(f"{path}: truncated ({len(payload)} of {header.get('payload_bytes')} payload bytes)")
    arrays = {}
    try:
        for t in header["arrays"]:
            dt = np.dtype(t["dtype"])
            a = np.frombuffer(payload, dtype=dt, count=t["nbytes"] // dt.itemsize, offset=t["offset"])
            arrays[t["name"]] = a.reshape(t["shape"])
    except (KeyError, TypeError, ValueError):
        raise CorruptFile(f"{path}: damaged array table") from None
    return header["meta"], arrays


def read_meta(path: Path) -> dict[str, Any]:
    """The caller's metadata alone, without reading or verifying the payload (for reports;
    anything that uses the arrays goes through ``read``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PREFIX)
            if len(head) < _PREFIX:
                raise CorruptFile(f"{path}: not a localsym block file")
            hlen = struct.unpack_from("<I", head, 12)[0]
            return _header(path, head + f.read(hlen))[1]["meta"]
    except OSError as e:
        raise CorruptFile(f"{path}: unreadable ({e.strerror})") from None
