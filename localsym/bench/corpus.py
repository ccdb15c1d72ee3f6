"""Real text nobody here wrote: the CPython standard library sources on this machine."""

from __future__ import annotations

import sysconfig
from collections.abc import Iterator
from pathlib import Path

# A fixed, ordered list so that runs on different machines read the same text.
STDLIB_FILES = (
    "textwrap.py",
    "argparse.py",
    "json/decoder.py",
    "json/encoder.py",
    "csv.py",
    "shlex.py",
    "fnmatch.py",
    "heapq.py",
    "bisect.py",
    "calendar.py",
    "difflib.py",
    "configparser.py",
    "inspect.py",
    "dataclasses.py",
    "typing.py",
    "pathlib.py",
    "ast.py",
    "tokenize.py",
    "logging/__init__.py",
    "subprocess.py",
    "tarfile.py",
    "zipfile.py",
    "http/client.py",
    "email/message.py",
    "pickle.py",
    "enum.py",
    "functools.py",
    "collections/__init__.py",
    "statistics.py",
    "fractions.py",
    "decimal.py",
    "_pydecimal.py",
    "unittest/case.py",
    "asyncio/base_events.py",
    "asyncio/tasks.py",
    "concurrent/futures/_base.py",
    "threading.py",
    "socket.py",
    "ssl.py",
    "urllib/parse.py",
    "urllib/request.py",
    "xml/dom/minidom.py",
    "imaplib.py",
    "smtplib.py",
    "ftplib.py",
    "mailbox.py",
    "pydoc.py",
    "doctest.py",
    "optparse.py",
    "gettext.py",
    "locale.py",
    "codecs.py",
    "string.py",
    "re/_parser.py",
    "re/_compiler.py",
    "sre_constants.py",
    "random.py",
    "datetime.py",
    "_strptime.py",
)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> Iterator[Path]:
    root = stdlib_dir()
    for name in STDLIB_FILES:
        p = root / name
        if p.is_file():
            yield p


def stdlib_text(min_chars: int) -> str:
    """At least ``min_chars`` of concatenated stdlib source (or all of the list)."""
    parts, n = [], 0
    for p in stdlib_files():
        t = p.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# file: {p.name}\n{t}")
        n += len(t)
        if n >= min_chars:
            break
    return "\n".join(parts)


def stdlib_words(min_len: int = 4, max_len: int = 10) -> list[str]:
    """The distinct lowercase words (letters only) of all of the list's sources, sorted."""
    import re

    text = stdlib_text(1 << 62)
    return sorted(set(re.findall(rf"\b[a-z]{{{min_len},{max_len}}}\b", text)))
