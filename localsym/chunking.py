"""Cutting a file into blocks that follow its structure, each with a header the model reads.

A block boundary prefers the start of a definition (the outermost first), then a Markdown
heading, then a blank line, and only then any line: one function is not split across two
blocks when it fits in one, and a block says what it holds. Each block starts with a
header line (``### requests/cookies.py:412-440 · in RequestsCookieJar: get, set``) so the
model can name what it reads and where, and the lexical index gets the names as words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np

from localsym.code_structure import Definition, definitions, is_code

HEADER_RESERVE = 40  # tokens kept for a block's header when packing its lines
MIN_FILL = 4  # a boundary is looked for only past 1/MIN_FILL of a block: no tiny blocks
MAX_NAMES = 8  # definitions named in one header, at most
_HEADING = re.compile(r"^#{1,6}\s+\S")
_COMMENT = re.compile(r"^\s*(#(?!!)|//|/\*|\*|--|;)")


@dataclass
class Chunk:
    tokens: list[int] | np.ndarray
    lines: tuple[int, int] | None  # first and last line of the file it covers, 1-based (None: a document)
    label: str = ""  # what it holds, as its header says it ("in Jar: get, set"; a section)
    defs: tuple[str, ...] = field(default_factory=tuple)  # qualified names it defines or sits in
    pages: tuple[int, int] | None = None  # first and last page, for paged documents


def split_lines(text: str) -> list[str]:
    """Lines with their ends, numbered as ``ast`` and editors number them ("\\n" only)."""
    parts = text.split("\n")
    out = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        out.append(parts[-1])
    return out


def _scores(lines: list[str], defs: list[Definition], code: bool) -> list[int]:
    """How good a block start each line is: 4 a top-level definition (with the comments and
    decorators right above it), 3 a method, 2 deeper or a heading, 1 after a blank line."""
    score = [0] * (len(lines) + 1)
    for i in range(1, len(lines)):
        if not lines[i - 1].strip():
            score[i] = 1
        if not code and _HEADING.match(lines[i]):
            score[i] = max(score[i], 3)
    for d in defs:
        i = d.line0 - 1
        while i > 0 and _COMMENT.match(lines[i - 1]) and lines[i - 1].strip():
            i -= 1  # the comment block right above a definition belongs to it
        if 0 <= i < len(lines):
            score[i] = max(score[i], max(4 - d.depth, 2))
    return score


def _ranges(counts: list[int], score: list[int], cap: int) -> list[tuple[int, int]]:
    """Line ranges [a, b) of at most ``cap`` tokens each, cut at the best-scored line in the
    last three quarters of each block (the latest of equals)."""
    pre = [0, *accumulate(counts)]
    out: list[tuple[int, int]] = []
    s, i, n = 0, 0, len(counts)
    while i < n:
        if counts[i] > cap:  # one line longer than a block: alone (cut by tokens later)
            if s < i:
                out.append((s, i))
            out.append((i, i + 1))
            s = i = i + 1
            continue
        if pre[i + 1] - pre[s] <= cap:
            i += 1
            continue
        cut, best = i, score[i]
        for j in range(i - 1, s, -1):
            if pre[j] - pre[s] < cap // MIN_FILL:
                break
            if score[j] > best:
                cut, best = j, score[j]
        out.append((s, cut))
        s = i = cut
    if s < n:
        out.append((s, n))
    return out


def _label(defs: list[Definition], a: int, b: int) -> tuple[str, tuple[str, ...]]:
    """What lines ``a``..``b`` (1-based) hold: the definition they start inside, and the
    ones that start in them."""
    inside = [d for d in defs if d.line0 < a <= d.line1]
    starting = [d.qualname for d in defs if a <= d.line0 <= b]
    parts = []
    if inside:
        parts.append(f"in {inside[-1].qualname}")
    if starting:
        names = starting[:MAX_NAMES] + (["…"] if len(starting) > MAX_NAMES else [])
        parts.append(", ".join(names))
    return ": ".join(parts), tuple(d.qualname for d in inside) + tuple(starting)


def _header(name: str, a: int, b: int, label: str, tokenize: Callable[[str], list[int]]) -> str:
    """The block's first line, shortened to fit ``HEADER_RESERVE`` tokens."""
    while True:
        head = f"### {name}:{a}-{b}" + (f" · {label}" if label else "") + "\n"
        if not label or len(tokenize(head)) <= HEADER_RESERVE:
            return head
        label = label[: len(label) * 3 // 4].rstrip(", ") + "…" if len(label) > 8 else ""


def chunk_file(text: str, name: str, tokenize: Callable[[str], list[int]], block_tokens: int) -> list[Chunk]:
    """``text`` (the file shown as ``name``) in blocks of at most ``block_tokens`` tokens."""
    lines = split_lines(text) or [""]
    code = is_code(name)
    defs = definitions(text, name) if code else []
    counts = [len(tokenize(ln)) for ln in lines]
    cap = max(block_tokens - HEADER_RESERVE, block_tokens // 2)
    out: list[Chunk] = []
    for a, b in _ranges(counts, _scores(lines, defs, code), cap):
        label, names = _label(defs, a + 1, b)
        last = b if lines[b - 1].strip() or b - 1 == a else b - 1  # a trailing blank line is no content
        toks = tokenize(_header(name, a + 1, last, label, tokenize) + "".join(lines[a:b]))
        for k in range(0, len(toks), block_tokens):  # only a line longer than a block is cut here
            out.append(Chunk(toks[k : k + block_tokens], (a + 1, last), label, names))
    return out
