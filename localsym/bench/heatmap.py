"""A heatmap as a PNG with no plotting library: a grid of colored cells, written with zlib."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def _color(v: float | None) -> tuple[int, int, int]:
    if v is None:
        return (200, 200, 200)  # not measured
    v = max(0.0, min(1.0, v))
    return (int(255 * (1 - v)), int(200 * v + 40 * (1 - v)), 60)  # red (0) -> green (1)


def write_png(path: Path, grid: list[list[float | None]], cell: int = 40) -> None:
    rows, cols = len(grid), len(grid[0]) if grid else 0
    w, h = cols * cell, rows * cell
    raw = bytearray()
    for y in range(h):
        raw.append(0)
        r = grid[y // cell]
        for x in range(w):
            border = x % cell in (0, cell - 1) or y % cell in (0, cell - 1)
            raw.extend((255, 255, 255) if border else _color(r[x // cell]))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")
    path.write_bytes(png)
