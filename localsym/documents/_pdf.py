"""PDF text through PDFium (pypdfium2): page by page, so memory stays flat for any page count.

PDFium gives each page's text in content order with its line breaks, and marks the hyphens it
recognises at line ends (U+0002, the break already removed), so "con-/sidered" comes out whole.
Per line we ask only for the first and last character's box and the first one's font size (a few
calls a line, not one a character): enough to drop running headers and footers, to find
paragraphs (a vertical gap, an indented first line, a short last line) and headings (a font
clearly bigger than the body's). The document's outline is not used: LaTeX manuals often lack one.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsym.documents._text import HeadingPath, fix_ligatures
from localsym.documents._types import DocumentError, Part, PartStream, Progress, Source

EDGE = 0.13  # the top and bottom 13% of a page hold running headers and footers
LOOK = 2  # a header/footer repeats within this many pages either side
HEADING_RATIO = 1.12  # a line at least this much bigger than the body text is a heading
_HYPHEN_MARKS = re.compile("[\x02\ufffe]")  # PDFium's mark for a hyphen it joined across a line break
_PAGE_NUMBER = re.compile(r"^(page\s*)?(#+|[ivxlcdm]+)(\s*(of|/)\s*#+)?$")


@dataclass
class _Line:
    text: str
    left: float
    right: float
    top: float
    bottom: float
    size: float
    key: str = ""  # the header/footer key ("" for lines away from the edges)


def read(src: Source, progress: Progress | None = None) -> PartStream:
    """Open a PDF and stream its parts; encrypted and truncated files fail here, at once."""
    import pypdfium2 as pdfium

    _check_complete(src)
    try:
        doc = pdfium.PdfDocument(src)
    except pdfium.PdfiumError as e:
        code = getattr(e, "err_code", None)
        if code == pdfium.raw.FPDF_ERR_PASSWORD:
            raise DocumentError("encrypted: needs a password") from None
        if code == pdfium.raw.FPDF_ERR_SECURITY:
            raise DocumentError("encrypted with an unsupported security handler") from None
        raise DocumentError("truncated or damaged PDF") from None
    except OSError as e:
        raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None
    try:
        title = (doc.get_metadata_value("Title") or "").strip() or None
    except Exception:  # a damaged Info dictionary: the title is a nicety
        title = None
    return PartStream("pdf", title, _parts(doc, progress))


def _check_complete(src: Source) -> None:
    """A PDF ends with %%EOF; PDFium would quietly rebuild a cut-off file and lose its tail."""
    if isinstance(src, bytes):
        head, tail = src[:1024], src[-4096:]
    else:
        try:
            with open(src, "rb") as f:
                head = f.read(1024)
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 4096))
                tail = f.read()
        except OSError as e:
            raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None
    if b"%PDF-" not in head:
        raise DocumentError("not a PDF (no %PDF header)")
    if b"%%EOF" not in tail:
        raise DocumentError("truncated or damaged PDF (no end-of-file marker)")


def _parts(doc: Any, progress: Progress | None) -> Iterator[Part]:
    """Pages read one at a time; each is emitted once the pages around it are known (LOOK
    either side), which is what telling a running header from body text needs."""
    try:
        n = len(doc)
        window: deque[list[_Line]] = deque()
        sizes: Counter[float] = Counter()  # characters by font size, the whole document so far
        headings = HeadingPath()
        chars = 0
        for i in range(n + LOOK):
            if i < n:
                lines = _page_lines(doc, i)
                chars += sum(len(ln.text) for ln in lines)
                for ln in lines:
                    sizes[ln.size] += len(ln.text)
                window.append(lines)
                if progress is not None:
                    progress(i + 1, n)
            at = i - LOOK  # the page whose neighbours are now all known
            if at < 0 or at >= n:
                continue
            mid = min(at, LOOK)
            body = sizes.most_common(1)[0][0] if sizes else 0.0
            kept = _drop_running(list(window), mid, body)
            yield from _page_parts(kept, at + 1, sizes, headings)
            if at >= LOOK:
                window.popleft()
        if n and chars == 0:
            raise DocumentError("no text layer (scanned?)")
    finally:
        doc.close()


def _page_lines(doc: Any, i: int) -> list[_Line]:
    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    try:
        page = doc[i]
    except pdfium.PdfiumError:
        raise DocumentError(f"damaged PDF: page {i + 1} cannot be read") from None
    try:
        height = page.get_height()
        tp = page.get_textpage()
        try:
            text = tp.get_text_range()
            exact = len(text) == tp.count_chars()  # indexes line up (no character outside the BMP)
            out: list[_Line] = []
            pos = 0
            for raw_line in text.split("\r\n"):
                start, pos = pos, pos + len(raw_line) + 2
                line = fix_ligatures(_HYPHEN_MARKS.sub("", raw_line)).strip()
                if not line:
                    continue
                if exact:
                    first = start + len(raw_line) - len(raw_line.lstrip())
                    last = start + len(raw_line.rstrip()) - 1
                    left, bottom, _, top = tp.get_charbox(first)
                    right = tp.get_charbox(last)[2]
                    size = round(raw.FPDFText_GetFontSize(tp.raw, first), 1)
                else:
                    left, right, top, bottom, size = 0.0, 0.0, 0.0, 0.0, 0.0
                ln = _Line(line, left, right, top, bottom, size)
                if exact and (top > height * (1 - EDGE) or bottom < height * EDGE):
                    ln.key = re.sub(r"\d+", "#", re.sub(r"\s+", " ", line.lower())).strip()
                out.append(ln)
            return out
        finally:
            tp.close()
    finally:
        page.close()


def _drop_running(window: list[list[_Line]], mid: int, body: float) -> list[_Line]:
    """Page ``window[mid]`` without its running headers and footers: edge lines no bigger than
    the body text that are page numbers, or whose text (digits aside) sits at an edge of a
    neighbouring page too ("Chapter 3" at the top of pages 3 and 4 is a heading, in big type)."""
    near = {ln.key for j, page in enumerate(window) if j != mid for ln in page if ln.key}
    kept = []
    for ln in window[mid]:
        small = body <= 0 or ln.size <= body * 1.05
        if ln.key and small and (_PAGE_NUMBER.match(ln.key) or ln.key in near):
            continue
        kept.append(ln)
    return kept


def _page_parts(lines: list[_Line], page: int, sizes: Counter[float], headings: HeadingPath) -> Iterator[Part]:
    """One page's lines as parts: paragraphs by layout, a new part at each heading."""
    if not lines:
        return
    body = sizes.most_common(1)[0][0] if sizes else 0.0
    pitches = [a.top - b.top for a, b in zip(lines, lines[1:]) if a.size == body == b.size and 0 < a.top - b.top]
    pitch = statistics.median(pitches) if pitches else body * 1.2
    body_lines = [ln for ln in lines if ln.size == body] or lines
    col_left = min(ln.left for ln in body_lines)
    col_right = max(ln.right for ln in body_lines)

    paragraphs: list[list[str]] = []
    start_heading, prev, prev_heading = False, None, False
    only_headings = False  # the part so far holds headings alone
    for ln in lines:
        is_heading = (
            body > 0 and ln.size >= body * HEADING_RATIO and len(ln.text) <= 150 and any(c.isalpha() for c in ln.text)
        )
        if (
            is_heading
            and prev_heading
            and prev is not None
            and abs(prev.size - ln.size) < 0.5
            and prev.top - ln.top < 2.5 * ln.size
        ):
            paragraphs[-1].append(ln.text)  # a title set on two lines
            headings.stack[-1] = (headings.stack[-1][0], headings.stack[-1][1] + " " + ln.text)
        elif is_heading:
            if paragraphs and not only_headings:
                yield Part(_text(paragraphs), page, headings.path, start_heading)
                paragraphs = []
            headings.enter(-ln.size, ln.text)  # "Chapter 2" then "2.1 Oil": one part, the deeper path
            paragraphs.append([ln.text])
            start_heading = only_headings = True
        elif prev is not None and not prev_heading and ln.top > prev.bottom and ln.bottom < prev.top:
            paragraphs[-1][-1] += ln.text  # the same visual line, broken at a superscript
        elif prev is None or prev_heading or _new_paragraph(prev, ln, pitch, col_left, col_right):
            paragraphs.append([ln.text])
            only_headings = False
        else:
            paragraphs[-1].append(ln.text)
        prev, prev_heading = ln, is_heading
    if paragraphs:
        yield Part(_text(paragraphs), page, headings.path, start_heading)


def _new_paragraph(prev: _Line, ln: _Line, pitch: float, col_left: float, col_right: float) -> bool:
    """A vertical gap, a first line indented where the line before was not, or a line before
    that stopped short after a full stop."""
    em = max(ln.size, 1.0)
    if prev.top - ln.top > pitch * 1.5 or ln.top > prev.top:  # a gap, or a jump back up (a new column)
        return True
    if ln.left > col_left + 0.8 * em and abs(ln.left - prev.left) > 0.8 * em:
        return True
    return prev.right < col_right - 3 * em and prev.text[-1:] in ".:!?"


def _text(paragraphs: list[list[str]]) -> str:
    return "\n\n".join("\n".join(p) for p in paragraphs)


def page_count(path: Path) -> int:
    """Pages in a PDF (for measuring)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(path)
    try:
        return len(doc)
    finally:
        doc.close()
