"""Where localsym's log goes: a rotating file in the log dir, and stderr only when asked.

``localsym.log`` in ``paths.log_dir()`` (platformdirs' ``user_log_dir``, or
``$LOCALSYM_HOME/logs``) keeps warnings and errors of every command, 1 MiB a file, three
old files kept. Nothing goes to the terminal by default: the chat draws on it (`serve`
shows its warnings, its console being its operator's). ``--verbose`` mirrors localsym's log
to stderr (never in the chat); ``--llama-log`` adds llama.cpp's own log (hundreds of lines
a model load) to both.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from localsym import paths

FILE = "localsym.log"
MAX_BYTES = 1 << 20
BACKUPS = 3
_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def log_file() -> Path:
    return paths.log_dir() / FILE


def setup(
    verbose: bool = False, llama_log: bool = False, terminal: bool = True, warnings_to_terminal: bool = False
) -> Path | None:
    """Configure the root logger once per process. ``terminal``: whether stderr may be
    written (False for the chat). ``warnings_to_terminal``: warnings on stderr too, even
    without ``verbose`` (`serve`, whose console is its operator's). Returns the log file,
    or None when it cannot be written (a read-only home): logging then goes on without it
    rather than stopping the command."""
    root = logging.getLogger()
    for h in list(root.handlers):  # a second call (tests call main() in one process) replaces
        if getattr(h, "_localsym", False):
            root.removeHandler(h)
            h.close()
    root.setLevel(logging.DEBUG if llama_log else logging.INFO if verbose else logging.WARNING)
    path: Path | None = log_file()
    try:
        paths.ensure(paths.log_dir())
        fh: logging.Handler = logging.handlers.RotatingFileHandler(
            str(path), maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8", delay=True
        )
    except OSError:
        fh, path = logging.NullHandler(), None
    fh.setLevel(logging.INFO if verbose else logging.WARNING)
    fh.setFormatter(logging.Formatter(_FORMAT))
    _mark(root, fh)
    if verbose and terminal:
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(logging.DEBUG if llama_log else logging.INFO)
        sh.setFormatter(logging.Formatter("localsym: %(name)s: %(message)s"))
        _mark(root, sh)
    elif warnings_to_terminal and terminal:
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(logging.DEBUG if llama_log else logging.WARNING)
        sh.setFormatter(logging.Formatter("localsym: %(name)s: %(message)s"))
        _mark(root, sh)
    elif llama_log and terminal:
        sh = logging.StreamHandler(sys.stderr)
        sh.setLevel(logging.DEBUG)
        sh.addFilter(lambda r: r.name == "localsym.llama")
        sh.setFormatter(logging.Formatter("%(message)s"))
        _mark(root, sh)
    # llama.cpp's debug chatter reaches a handler only when asked for; its warnings and
    # errors always reach the file
    logging.getLogger("localsym.llama").setLevel(logging.DEBUG if llama_log else logging.WARNING)
    logging.captureWarnings(True)  # Python warnings (a library's deprecation) to the file too
    return path


def _not_progress(record: logging.LogRecord) -> bool:
    """Drops llama.cpp's load progress: its continuation pieces (".", "\\n") arrive at its
    CONT level, which the bridge maps above WARN."""
    return record.name != "localsym.llama" or bool(record.getMessage().strip(". \n"))


def _mark(root: logging.Logger, h: logging.Handler) -> None:
    h._localsym = True  # type: ignore[attr-defined]
    h.addFilter(_not_progress)
    root.addHandler(h)
