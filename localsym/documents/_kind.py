"""Tell a document from plain text or code by its name and first bytes, importing nothing heavy:
the walker calls this for every file it meets."""

from __future__ import annotations

import re
from pathlib import Path

KINDS = ("pdf", "docx", "epub", "html", "markdown", "mail")

_BY_SUFFIX = {
    ".pdf": "pdf",
    ".docx": "docx",
    ".epub": "epub",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".md": "markdown",
    ".markdown": "markdown",
    ".eml": "mail",
    ".mbox": "mail",
}
# an mbox's first line: "From sender Sat Jan  3 01:05:34 1996"
_MBOX_FROM = re.compile(rb"From \S+ +\w{3} \w{3} [ \d]\d \d\d:\d\d")
_HTML_START = re.compile(rb"\s*(<!--.*?-->\s*)*<(!doctype\s+html|html)[\s>]", re.IGNORECASE | re.DOTALL)


def document_kind(path: Path, head: bytes) -> str | None:
    """The document format of ``path`` ("pdf", "docx", ...), from its suffix and its first bytes;
    None for anything else (plain text and code are read as they are)."""
    suffix = path.suffix.lower()
    if head.startswith(b"%PDF-") or b"%PDF-" in head[:1024]:
        return "pdf"
    if head.startswith(b"PK\x03\x04"):
        if head[30:58] == b"mimetypeapplication/epub+zip" or suffix == ".epub":
            return "epub"
        if suffix == ".docx" or b"word/" in head:
            return "docx"
        return None  # some other zip
    kind = _BY_SUFFIX.get(suffix)
    if kind is not None:
        return kind
    if _MBOX_FROM.match(head):
        return "mail"
    if _HTML_START.match(head.removeprefix(b"\xef\xbb\xbf")):
        return "html"
    return None
