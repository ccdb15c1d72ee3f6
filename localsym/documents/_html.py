"""HTML through lxml's parser in its event (SAX) form: text and headings kept, scripts, styles
and navigation dropped, <pre> kept verbatim, tables as rows.

No tree is built: libxml2 calls ``start``/``data``/``end`` on a small writer as it reads 1 MiB
chunks, and a long section goes out in parts of ~64K characters, so one 50 MB line of 3M small
tags streams at a 73 MB peak (a tree built whole took 1.9 GB). ``huge_tree`` is on: without it
libxml2 silently cuts a text node at 10 MB (and iterparse ignores the flag for HTML).
"""

from __future__ import annotations

import codecs
import html
import io
import re
from collections.abc import Iterator
from typing import Any

from localsym.documents._text import HeadingPath, fix_ligatures
from localsym.documents._types import DocumentError, Part, PartStream, Progress, Source

CHUNK = 1 << 20
PART_CHARS = 1 << 16  # a section longer than this goes out in several parts, so memory stays flat
DROP_TAGS = frozenset(
    "script style noscript template nav svg math canvas iframe object embed head title button select "
    "textarea input form dialog".split()
)
DROP_ROLES = frozenset({"navigation", "search", "banner", "contentinfo"})
DROP_CLASSES = frozenset(
    "navheader navfooter docnav navbar nav navigation pagination breadcrumb breadcrumbs skip-link sr-only".split()
)  # DocBook's and Publican's page navigation, common site navigation
DROP_IDS = frozenset({"banner", "navigation", "navbar", "nav"})
BLOCK_TAGS = frozenset(
    "p div section article main header footer aside blockquote figure figcaption ul ol dl table "
    "thead tbody tfoot caption address details summary hr fieldset center body html".split()
)
LINE_TAGS = frozenset("li dt dd tr br".split())
HEADING_TAGS = {f"h{i}": i for i in range(1, 7)}
_WS = re.compile(r"\s{2,}|[^\S ]")  # only what needs changing: a single space is left alone (10x faster)
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)
_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([\w-]+)", re.IGNORECASE)


def read(src: Source, progress: Progress | None = None) -> PartStream:
    """An HTML file, read and turned into parts a chunk at a time."""
    try:
        f = io.BytesIO(src) if isinstance(src, bytes) else open(src, "rb")  # noqa: SIM115 (closed by _stream)
        head = f.read(1 << 16)
        f.seek(0, 2)
        total = f.tell()
        f.seek(0)
    except OSError as e:
        raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None
    encoding = _encoding(head)
    m = _TITLE.search(head)
    title = _WS.sub(" ", html.unescape(m.group(1).decode(encoding, "replace"))).strip() if m else ""
    return PartStream("html", title or None, _stream(f, encoding, total, progress))


def _stream(f: io.BufferedIOBase | io.BytesIO, encoding: str, total: int, progress: Progress | None) -> Iterator[Part]:
    with f:
        if encoding == "utf-8" and f.read(3) != b"\xef\xbb\xbf":
            f.seek(0)
        chunks = iter(lambda: f.read(CHUNK), b"")
        done = 0

        def counted() -> Iterator[bytes]:
            nonlocal done
            for c in chunks:
                done += len(c)
                yield c

        for part in html_parts(counted(), encoding):
            yield part
            if progress is not None:
                progress(done, total)
    if progress is not None:
        progress(total, total)


def _encoding(head: bytes) -> str:
    """From a BOM or <meta charset>, else UTF-8 when the start is valid UTF-8, else
    Windows-1252 (libxml2 alone would assume Latin-1)."""
    if head.startswith(b"\xef\xbb\xbf"):
        return "utf-8"
    if head[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return "utf-16"
    m = _META_CHARSET.search(head[:4096])
    if m is not None:
        name = m.group(1).decode("ascii", "replace").lower()
        try:
            return codecs.lookup(name).name
        except LookupError:
            return "utf-8"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the sample
            return "cp1252"
    return "utf-8"


def page_parts(data: bytes, root_heading: str | None = None) -> Iterator[Part]:
    """Parts of a page held in memory (an EPUB chapter, a mail's HTML body)."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
        encoding = "utf-8"
    else:
        encoding = _encoding(data[: 1 << 16])
    yield from html_parts((data[i : i + CHUNK] for i in range(0, len(data), CHUNK)), encoding, root_heading)


def parse(data: bytes) -> Any:
    """A whole (small) page as an lxml tree: an EPUB's table of contents."""
    import lxml.etree

    parser = lxml.etree.HTMLParser(encoding=_encoding(data[: 1 << 16]), remove_comments=True, remove_pis=True)
    try:
        root = lxml.etree.fromstring(data.removeprefix(b"\xef\xbb\xbf"), parser=parser)
    except (lxml.etree.XMLSyntaxError, ValueError):
        root = None
    if root is None:  # nothing but whitespace or comments
        root = lxml.etree.fromstring(b"<html><body></body></html>", parser=parser)
    return root


def html_parts(chunks: Iterator[bytes], encoding: str, root_heading: str | None = None) -> Iterator[Part]:
    """Parts of a page fed to libxml2 chunk by chunk, a new part at each heading; ``root_heading``
    heads every path (an EPUB chapter's title)."""
    import lxml.etree

    w = _Writer(root_heading)
    try:
        parser = lxml.etree.HTMLParser(
            target=w, encoding=encoding, huge_tree=True, remove_comments=True, remove_pis=True
        )
    except LookupError:
        parser = lxml.etree.HTMLParser(
            target=w, encoding="utf-8", huge_tree=True, remove_comments=True, remove_pis=True
        )
    fed = False
    for chunk in chunks:
        try:
            parser.feed(chunk)
        except lxml.etree.XMLSyntaxError:
            pass  # libxml2's HTML parser recovers; an error here is a hopeless fragment
        fed = True
        yield from w.take()
    if fed:
        try:
            parser.close()
        except lxml.etree.XMLSyntaxError:
            pass
    w.finish()
    yield from w.take()


class _Writer:
    """The parser's target: collects text into lines, paragraphs and sections."""

    def __init__(self, root_heading: str | None) -> None:
        self.headings = HeadingPath(root_heading)
        self.done: list[Part] = []  # sections finished, taken after each chunk
        self.paragraphs: list[str] = []
        self.lines: list[str] = []
        self.inline: list[str] = []
        self.heading: list[str] | None = None
        self.pre = 0
        self.dropping = 0  # depth inside a dropped element (script, nav...)
        self.start_heading = root_heading is not None  # a chapter begins a part
        self.only_headings = False  # the section so far holds headings alone
        self.size = 0  # characters in self.paragraphs

    # -- parser target
    def start(self, tag: str, attrib: Any) -> None:
        if self.dropping or _dropped(tag, attrib):
            self.dropping += 1
            return
        level = HEADING_TAGS.get(tag)
        if level is not None and self.heading is None and not self.pre:
            self.paragraph()
            if not self.only_headings:  # <h1> then <h2>: one part, the deeper path
                self.section()
            self.heading = []
        elif tag == "pre":
            self.paragraph()
            self.pre += 1
        elif tag in BLOCK_TAGS:
            self.paragraph()
        elif tag in LINE_TAGS:
            self.line()

    def end(self, tag: str) -> None:
        if self.dropping:
            self.dropping -= 1
            return
        level = HEADING_TAGS.get(tag)
        if level is not None and self.heading is not None:
            title = _WS.sub(" ", "".join(self.heading)).strip()
            self.heading = None
            if title:
                if title.casefold() != (self.headings.root or "").casefold() or self.headings.stack:
                    self.headings.enter(level, title)  # a chapter's own title heads it once, not twice
                self.paragraphs.append(fix_ligatures(title))
                self.start_heading = self.only_headings = True
        elif tag == "pre":
            self.line()
            self.pre = max(0, self.pre - 1)
            self.paragraph()
        elif tag in ("td", "th"):
            self.data(" | ")
        elif tag == "tr":
            if self.inline and self.inline[-1] == " | ":
                self.inline.pop()
            self.line()
        elif tag in BLOCK_TAGS:
            self.paragraph()
        elif tag in LINE_TAGS:
            self.line()

    def data(self, s: str) -> None:
        if self.dropping or not s:
            return
        if self.heading is not None:
            self.heading.append(s)
        elif self.pre:
            self.inline.append(s)
        else:
            self.inline.append(_WS.sub(" ", s))

    def close(self) -> None:
        """Called by the parser; the last section is kept by ``finish``."""

    # -- building
    def line(self) -> None:
        if self.inline:
            text = "".join(self.inline)
            self.inline = []
            text = text.strip("\n") if self.pre else text.strip()
            if text.strip():
                self.lines.append(text)

    def paragraph(self) -> None:
        self.line()
        if self.lines:
            self.paragraphs.append(fix_ligatures("\n".join(self.lines)))
            self.size += len(self.paragraphs[-1]) + 2  # and the blank line after it
            self.lines = []
            self.only_headings = False
            if self.size > PART_CHARS:
                self.section()

    def section(self) -> None:
        self.paragraph()
        if self.paragraphs:
            self.done.append(Part("\n\n".join(self.paragraphs), None, self.headings.path, self.start_heading))
        self.paragraphs, self.start_heading, self.only_headings, self.size = [], False, False, 0

    def finish(self) -> None:
        if self.heading:  # a heading never closed
            self.inline.extend(self.heading)
            self.heading = None
        self.section()

    def take(self) -> list[Part]:
        done, self.done = self.done, []
        return done


def _dropped(tag: str, attrib: Any) -> bool:
    if tag in DROP_TAGS:
        return True
    if not attrib:
        return False
    if attrib.get("hidden") is not None or attrib.get("aria-hidden") == "true" or attrib.get("role") in DROP_ROLES:
        return True
    if attrib.get("id") in DROP_IDS:
        return True
    cls = attrib.get("class")
    return bool(cls) and not DROP_CLASSES.isdisjoint(cls.split())
