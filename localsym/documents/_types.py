"""What every format reader hands back: parts of text with the place they came from."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from localsym.errors import LocalsymError

Progress = Callable[[int, int], None]  # (done, total): pages for PDF, bytes for mbox, 1 of 1 for the rest
Source = Path | bytes  # a file, or the bytes of one (a mail attachment)

MAX_DOCUMENT_BYTES = 256 << 20  # the walker's cap for documents (text files keep ingest's 1 MiB)
MAX_UNPACKED_BYTES = 256 << 20  # what a DOCX/EPUB may unpack to, all members together
MAX_ZIP_MEMBERS = 20_000


class DocumentError(LocalsymError):
    """A document that cannot be read, with a one-line reason ("encrypted: needs a password")."""


@dataclass(frozen=True)
class Part:
    """A stretch of a document's text with where it came from.

    Attributes:
        text: plain text, paragraphs separated by blank lines.
        page: 1-based page for paged formats (PDF), else None.
        heading: heading path ("Installation > From source"); for mail "From · Date · Subject".
        heading_start: the part begins at a heading (a preferred block boundary).
    """

    text: str
    page: int | None = None
    heading: str | None = None
    heading_start: bool = False


@dataclass
class Document:
    """A whole document read into memory: its kind, parts in reading order, and title."""

    kind: str
    parts: list[Part] = field(default_factory=list)
    title: str | None = None

    @property
    def text(self) -> str:
        """All parts' text, a blank line between parts."""
        return "\n\n".join(p.text for p in self.parts)


@dataclass
class PartStream:
    """Parts produced lazily, so a 1,000-page PDF or a 1 GB mbox is never held whole.

    ``kind`` and ``title`` are known before the first part. Iterating may raise DocumentError
    (a damaged page further on, or no text at all once the end is reached).
    """

    kind: str
    title: str | None
    parts: Iterator[Part]

    def __iter__(self) -> Iterator[Part]:
        return self.parts
