"""Cutting an extracted document (PDF, DOCX, EPUB, HTML, mail) into blocks that follow it.

A boundary prefers a heading, then a page, then a paragraph; a block never holds text of
two documents (each file is its own list of blocks). Each block starts with a header the
model reads and can cite: ``### manual.pdf p. 9-10 · Installation > From source``.
"""

from __future__ import annotations

from collections.abc import Callable

from localsym.chunking import Chunk, _ranges
from localsym.documents import Document

HEADER_RESERVE = 40


def _where(name: str, pages: tuple[int, int] | None, section: str) -> str:
    head = f"### {name}"
    if pages:
        head += f" p. {pages[0]}" if pages[0] == pages[1] else f" p. {pages[0]}-{pages[1]}"
    return head + (f" · {section}" if section else "") + "\n"


def chunk_document(doc: Document, name: str, tokenize: Callable[[str], list[int]], block_tokens: int) -> list[Chunk]:
    """``doc`` (the file shown as ``name``) in blocks of at most ``block_tokens`` tokens."""
    lines: list[str] = []
    page: list[int | None] = []
    section: list[str] = []
    score: list[int] = []
    for part in doc.parts:
        text = part.text if part.text.endswith("\n") else part.text + "\n"
        first = True
        for ln in text.split("\n")[:-1]:
            s = 0
            if first and part.heading_start:
                s = 4
            elif first and lines and part.page is not None and part.page != page[-1]:
                s = 2
            elif lines and not lines[-1].strip():
                s = 1
            lines.append(ln + "\n")
            page.append(part.page)
            section.append(part.heading or "")
            score.append(s)
            first = False
        if not part.text.endswith("\n\n"):
            lines.append("\n")  # parts are paragraphs apart
            page.append(part.page)
            section.append(part.heading or "")
            score.append(0)
    if not lines:
        return []
    counts = [len(tokenize(ln)) for ln in lines]
    cap = max(block_tokens - HEADER_RESERVE, block_tokens // 2)
    out: list[Chunk] = []
    for a, b in _ranges(counts, [*score, 0], cap):
        body = "".join(lines[a:b])
        if not body.strip():
            continue
        pgs = [p for p in page[a:b] if p is not None]
        pages = (min(pgs), max(pgs)) if pgs else None
        label = next((s for s in section[a:b] if s), "")
        head = _where(name, pages, label)
        if len(tokenize(head)) > HEADER_RESERVE:
            head = _where(name, pages, label[:60] + "…")
        toks = tokenize(head + body)
        for k in range(0, len(toks), block_tokens):  # only a line longer than a block is cut here
            out.append(Chunk(toks[k : k + block_tokens], None, label, (label,) if label else (), pages))
    return out
