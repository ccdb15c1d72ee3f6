"""DOCX through python-docx: body paragraphs and tables in document order, headings from the
paragraph styles ("Title", "Heading 1".."Heading 9"), a table as one paragraph of rows."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from typing import Any

from localsym.documents._text import HeadingPath, fix_ligatures, squash
from localsym.documents._types import DocumentError, Part, PartStream, Progress, Source
from localsym.documents._zip import open_zip

_HEADING_STYLE = re.compile(r"^(?:heading\s*(\d)|title)$", re.IGNORECASE)


def read(src: Source, progress: Progress | None = None) -> PartStream:
    """Check the zip, then let python-docx parse it; a damaged package is a DocumentError."""
    import docx

    with open_zip(src, "DOCX"):
        pass
    try:
        document = docx.Document(io.BytesIO(src) if isinstance(src, bytes) else str(src))
    except Exception as e:  # python-docx raises KeyError, ValueError, lxml errors...: all are damage
        raise DocumentError(f"damaged DOCX ({type(e).__name__})") from None
    title = (document.core_properties.title or "").strip() or None
    return PartStream("docx", title, _parts(document, progress))


def _parts(document: Any, progress: Progress | None) -> Iterator[Part]:
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    headings = HeadingPath()
    paragraphs: list[str] = []
    start = False
    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            para = Paragraph(child, document)
            text = _clean(para.text)
            level = _heading_level(para)
            if level is not None and text:
                if paragraphs:
                    yield Part("\n\n".join(paragraphs), None, headings.path, start)
                headings.enter(level, text)
                paragraphs, start = [text], True
            elif text:
                paragraphs.append(text)
        elif tag == "tbl":
            rows = _table_rows(Table(child, document))
            if rows:
                paragraphs.append("\n".join(rows))
    if paragraphs:
        yield Part("\n\n".join(paragraphs), None, headings.path, start)
    if progress is not None:
        progress(1, 1)


def _heading_level(para: Any) -> int | None:
    """1..9 for "Heading N", 0 for "Title", None for body text."""
    try:
        name = para.style.name if para.style is not None else ""
    except (KeyError, ValueError):
        return None
    m = _HEADING_STYLE.match(name or "")
    if m is None:
        return None
    return int(m.group(1)) if m.group(1) else 0


def _table_rows(table: Any) -> list[str]:
    """Each row as its cells joined by " | " (merged cells said once)."""
    rows = []
    for row in table.rows:
        cells: list[str] = []
        seen: set[int] = set()
        for cell in row.cells:
            if id(cell._tc) in seen:
                continue
            seen.add(id(cell._tc))
            cells.append(_clean(cell.text).replace("\n", " "))
        if any(cells):
            rows.append(" | ".join(cells))
    return rows


def _clean(text: str) -> str:
    return fix_ligatures(squash(text)).strip()
