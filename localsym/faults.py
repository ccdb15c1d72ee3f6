"""Library errors a face can meet (a damaged zip, a broken SQLite file, a full disk, a file
that vanished), said in one line that names the cause, as a ``LocalsymError`` is. What is
not listed here is our own bug, and keeps its traceback."""

from __future__ import annotations

import errno
import sqlite3
import zipfile
import zlib


def describe(exc: BaseException) -> str | None:
    """One line for a known library error, or None (a bug: show it whole)."""
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return f"{where}the disk is full ({exc.strerror}); free some space and try again"
        what = exc.strerror or str(exc) or exc.__class__.__name__
        return f"{where}{what}"
    if isinstance(exc, zipfile.BadZipFile | zlib.error):
        return f"a damaged zip file ({exc})"
    if isinstance(exc, sqlite3.Error):
        return f"a SQLite database failed ({exc})"
    if isinstance(exc, UnicodeError):
        return f"text that is not valid Unicode ({exc})"
    if isinstance(exc, EOFError):
        return f"a file ended early ({exc or 'truncated'})"
    if isinstance(exc, RecursionError):
        return "input nested too deeply"
    if isinstance(exc, MemoryError):
        return "out of memory"
    return None
