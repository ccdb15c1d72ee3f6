"""Mail with the standard library: one .eml message, or an mbox read message by message (the
file is scanned line by line, never held whole, so a 1 GB mbox keeps memory flat). Each message
is one part headed "sender · date · subject", its text the headers people read and the text
body; attachments that are documents (a PDF, a DOCX...) follow as parts of their own."""

from __future__ import annotations

import email.policy
import re
from collections.abc import Iterator
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import BinaryIO

from localsym.documents._api import read_source
from localsym.documents._kind import document_kind
from localsym.documents._text import fix_ligatures, normalize_blank_lines
from localsym.documents._types import DocumentError, Part, PartStream, Progress, Source

MAX_MESSAGE_BYTES = 64 << 20  # a bigger message is cut here (its attachments are the bulk)
_MBOXRD_QUOTE = re.compile(rb"^>(>*From )")
_HEADERS = ("From", "To", "Cc", "Date", "Subject")


def read(src: Source, progress: Progress | None = None) -> PartStream:
    """An .eml (one message) or an mbox (many, each starting at a "From " line)."""
    if isinstance(src, bytes):
        if src.startswith(b"From "):
            return PartStream("mail", None, _mbox_bytes(src, progress))
        msg = _parse(src)
        return PartStream("mail", _header(msg, "Subject") or None, _message_parts(msg))
    try:
        with open(src, "rb") as f:
            head = f.read(5)
    except OSError as e:
        raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None
    if head == b"From ":
        return PartStream("mail", None, _mbox_file(src, progress))
    msg = _parse(_read_capped(src))
    return PartStream("mail", _header(msg, "Subject") or None, _message_parts(msg))


def _read_capped(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(MAX_MESSAGE_BYTES)
    except OSError as e:
        raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None


def _parse(data: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert isinstance(msg, EmailMessage)  # policy.default builds EmailMessage
    return msg


def _mbox_file(path: Path, progress: Progress | None) -> Iterator[Part]:
    try:
        total = path.stat().st_size
        with open(path, "rb") as f:
            yield from _mbox_stream(f, total, progress)
    except OSError as e:
        raise DocumentError(f"unreadable ({e.strerror or type(e).__name__})") from None


def _mbox_bytes(data: bytes, progress: Progress | None) -> Iterator[Part]:
    import io

    yield from _mbox_stream(io.BytesIO(data), len(data), progress)


def _mbox_stream(f: BinaryIO, total: int, progress: Progress | None) -> Iterator[Part]:
    """Messages split at a "From " line after a blank line (or at the start), ">From " unquoted."""
    lines: list[bytes] = []
    size, done, blank_before = 0, 0, True
    for line in f:
        done += len(line)
        if line.startswith(b"From ") and blank_before:
            if lines:
                yield from _message_parts(_parse(b"".join(lines)))
                if progress is not None:
                    progress(done - len(line), total)
            lines, size = [], 0
            blank_before = False
            continue  # the separator line itself is not part of the message
        blank_before = line in (b"\n", b"\r\n")
        if size < MAX_MESSAGE_BYTES:
            line = _MBOXRD_QUOTE.sub(rb"\1", line)
            lines.append(line)
            size += len(line)
    if lines:
        yield from _message_parts(_parse(b"".join(lines)))
    if progress is not None:
        progress(total, total)


def _headers(msg: EmailMessage) -> dict[str, str]:
    """The headers people read, decoded (RFC 2047) and unfolded. Raw values through
    ``email.header``: the policy's header registry parsed each address list and took over half
    of an mbox's reading time."""
    out: dict[str, str] = {}
    for name, raw in msg.raw_items():
        key = name.title()
        if key in _HEADERS and key not in out:
            try:
                value = str(make_header(decode_header(str(raw))))
            except (ValueError, LookupError, UnicodeError, HeaderParseError):
                value = str(raw)
            out[key] = " ".join(value.split())
    return out


def _header(msg: EmailMessage, name: str) -> str:
    return _headers(msg).get(name, "")


def _message_parts(msg: EmailMessage) -> Iterator[Part]:
    """The message (headers and text body), then each attachment that is a document."""
    headers = _headers(msg)
    heading = " · ".join(v for v in (headers.get("From"), headers.get("Date"), headers.get("Subject")) if v) or None
    head_lines = [f"{h}: {headers[h]}" for h in _HEADERS if headers.get(h)]
    notes: list[str] = []
    attached: list[Part] = []
    for att in _attachments(msg):
        name = att.get_filename() or ""
        try:
            data = att.get_payload(decode=True)
        except Exception:  # a damaged transfer encoding
            notes.append(f"[attachment {name or '(unnamed)'}: cannot be decoded]")
            continue
        if not isinstance(data, bytes) or not data:
            continue
        kind = document_kind(Path(name), data[:8000])
        where = f"{heading} > {name}" if heading else name
        if kind is not None and kind != "mail":
            try:
                first = True
                for p in read_source(data, kind):
                    attached.append(Part(p.text, p.page, f"{where} > {p.heading}" if p.heading else where, first))
                    first = False
            except DocumentError as e:
                notes.append(f"[attachment {name}: {e}]")
        elif att.get_content_maintype() == "text" and att.get_content_subtype() == "plain":
            text = normalize_blank_lines(_decode(att, data))
            if text:
                attached.append(Part(text, None, where, True))
        else:
            notes.append(f"[attachment {name or att.get_content_type()}]")
    body = _body(msg)
    text = "\n".join(head_lines) + ("\n\n" + body if body else "") + ("\n\n" + "\n".join(notes) if notes else "")
    yield Part(fix_ligatures(text), None, heading, True)
    yield from attached


def _attachments(msg: EmailMessage) -> Iterator[EmailMessage]:
    """Attachments at any depth of multipart nesting (forwarded messages are not opened)."""
    try:
        for part in msg.iter_attachments():
            assert isinstance(part, EmailMessage)
            if part.get_content_maintype() == "multipart":
                yield from _attachments(part)
            elif part.get_content_type() != "message/rfc822":
                yield part
    except (KeyError, ValueError, TypeError):  # iter_attachments on a malformed multipart
        return


def _body(msg: EmailMessage) -> str:
    """The plain-text body, else the HTML body as text."""
    try:
        part = msg.get_body(preferencelist=("plain", "html"))
    except (KeyError, ValueError, TypeError):
        part = None
    if part is None:
        return ""
    assert isinstance(part, EmailMessage)
    data = part.get_payload(decode=True)
    if not isinstance(data, bytes):
        return ""
    text = _decode(part, data)
    if part.get_content_subtype() == "html":
        from localsym.documents._html import page_parts

        text = "\n\n".join(p.text for p in page_parts(b"\xef\xbb\xbf" + text.encode("utf-8")))
    return normalize_blank_lines(text.replace("\r\n", "\n"))


def _decode(part: EmailMessage, data: bytes) -> str:
    charset = part.get_content_charset() or "utf-8"
    try:
        return data.decode(charset, errors="replace")
    except LookupError:  # an unknown charset name
        return data.decode("utf-8", errors="replace")
