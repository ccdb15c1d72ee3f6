"""Small text helpers shared by the readers: ligatures, whitespace, the heading path."""

from __future__ import annotations

import re

# typographic ligatures a PDF or an e-book may carry as one character (U+FB00..FB06)
_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "st", "ﬆ": "st"})
_SPACES = re.compile(r"[ \t\r\f\v\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n\s*")


def fix_ligatures(text: str) -> str:
    """ "ﬁle" -> "file": searches and the tokenizer see the letters, not the glyph."""
    return text.translate(_LIGATURES)


def squash(text: str) -> str:
    """Runs of spaces and tabs become one space (newlines kept)."""
    return _SPACES.sub(" ", text)


def join_paragraphs(paragraphs: list[str]) -> str:
    """Paragraphs with one blank line between them, empty ones dropped."""
    return "\n\n".join(p for p in (q.strip("\n") for q in paragraphs) if p.strip())


def normalize_blank_lines(text: str) -> str:
    """Any run of blank lines becomes one blank line."""
    return _BLANKS.sub("\n\n", text).strip()


class HeadingPath:
    """The chain of open headings, "Installation > From source": a heading of level n closes
    every open heading of level n or deeper."""

    def __init__(self, root: str | None = None) -> None:
        self.root = root
        self.stack: list[tuple[float, str]] = []

    def enter(self, level: float, title: str) -> None:
        while self.stack and self.stack[-1][0] >= level:
            self.stack.pop()
        self.stack.append((level, title))

    @property
    def path(self) -> str | None:
        names = ([self.root] if self.root else []) + [t for _, t in self.stack]
        return " > ".join(names) if names else None
