"""One entry point for every format: find the kind, hand the file to its reader."""

from __future__ import annotations

import importlib
from pathlib import Path

from localsym.documents._kind import document_kind
from localsym.documents._types import Document, DocumentError, PartStream, Progress, Source

_READERS = {
    "pdf": "localsym.documents._pdf",
    "docx": "localsym.documents._docx",
    "epub": "localsym.documents._epub",
    "html": "localsym.documents._html",
    "markdown": "localsym.documents._markdown",
    "mail": "localsym.documents._mail",
}


def iter_parts(path: Path, progress: Progress | None = None, kind: str | None = None) -> PartStream:
    """Stream a document's parts (PDF page by page, mbox message by message).

    Args:
        path: the file.
        progress: called as (done, total): pages for a PDF, bytes for mail, 1 of 1 otherwise.
        kind: the format, when the caller knows it already (else sniffed like the walker does).

    Raises:
        DocumentError: at once for a file that cannot be opened (encrypted, truncated, a zip
            bomb), or while iterating for damage found further on (a PDF with no text layer).
    """
    path = Path(path)
    if kind is None:
        try:
            with open(path, "rb") as f:
                head = f.read(8000)
        except OSError as e:
            raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None
        kind = document_kind(path, head)
        if kind is None:
            raise DocumentError("not a document format this reads")
    return read_source(path, kind, progress)


def read_source(src: Source, kind: str, progress: Progress | None = None) -> PartStream:
    """A reader for ``kind`` over a file or bytes (mail attachments come as bytes)."""
    module = _READERS.get(kind)
    if module is None:
        raise DocumentError(f"unknown document kind {kind!r}")
    stream: PartStream = importlib.import_module(module).read(src, progress)
    return stream


def extract(path: Path, progress: Progress | None = None) -> Document:
    """The whole document in memory: kind, title and every part, in reading order.

    Raises:
        DocumentError: with a one-line reason ("encrypted: needs a password").
    """
    stream = iter_parts(path, progress)
    return Document(stream.kind, list(stream), stream.title)
