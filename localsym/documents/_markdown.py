"""Markdown as it is written (the markup is already plain text people read), cut into sections
at its headings. markdown-it-py finds the headings, so a "# comment" inside a code fence or a
"Title\\n=====" setext heading is told apart as CommonMark says."""

from __future__ import annotations

from collections.abc import Iterator

from localsym.documents._text import HeadingPath, fix_ligatures
from localsym.documents._types import DocumentError, Part, PartStream, Progress, Source


def read(src: Source, progress: Progress | None = None) -> PartStream:
    """A Markdown file; its first level-1 heading is the title."""
    from markdown_it import MarkdownIt

    try:
        data = src if isinstance(src, bytes) else src.read_bytes()
    except OSError as e:
        raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None
    text = data.decode("utf-8-sig", errors="replace").replace("\r\n", "\n")
    lines = text.split("\n")
    tokens = MarkdownIt("commonmark").parse(text)
    heads: list[tuple[int, int, int, str]] = []  # (first line, end line, level, title)
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open" and tok.map is not None and tok.level == 0:
            inline = tokens[i + 1]
            heads.append((tok.map[0], tok.map[1], int(tok.tag[1:]), inline.content.strip()))
    title = next((t for _, _, level, t in heads if level == 1), None)
    return PartStream("markdown", title, _parts(lines, heads, progress))


def _parts(lines: list[str], heads: list[tuple[int, int, int, str]], progress: Progress | None) -> Iterator[Part]:
    path = HeadingPath()
    bounds = [(0, None, None)] + [(first, level, title) for first, _, level, title in heads]
    for k, (first, level, title) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else len(lines)
        if level is not None and title is not None:
            path.enter(level, title)
        body = fix_ligatures("\n".join(lines[first:end])).strip("\n")
        if body.strip():
            yield Part(body, None, path.path, level is not None)
    if progress is not None:
        progress(1, 1)
