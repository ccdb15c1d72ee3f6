"""The chat templates llama.cpp ships (models/templates/*.jinja), from the pinned llama-cpp-python sdist.

They are real models' templates, gathered by llama.cpp for its own template tests, so they are the
widest test set at hand. The sdist (77 MB) is fetched once per machine and only the templates are kept,
beside the test models, so later runs read a few hundred kB from disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import MODEL_CACHE

VERSION = "0.3.36"  # the llama-cpp-python pyproject.toml pins
_MEMBER_DIR = "/vendor/llama.cpp/models/templates/"


class TemplatesUnavailable(RuntimeError):
    """No cached templates and no way to fetch them (offline, pip failing): the message says which."""


def templates_dir() -> Path:
    """The cached templates directory, downloading and extracting the sdist when it is missing."""
    dest = MODEL_CACHE / f"llama-templates-{VERSION}"
    if any(dest.glob("*.jinja")):
        return dest
    try:
        _fetch(dest)
    except Exception as e:  # any failure here means "no templates": say why
        raise TemplatesUnavailable(
            f"could not get llama.cpp's chat templates from the llama-cpp-python=={VERSION} sdist into {dest}: {e}"
        ) from e
    return dest


def unavailable(why: str) -> NoReturn:
    """Fail with the reason: a silent skip would hide that the templates were never checked.

    LOCALSYM_OFFLINE_OK=1 asks for a skip instead, for machines known to be offline.
    """
    if os.environ.get("LOCALSYM_OFFLINE_OK") == "1":
        pytest.skip(why)
    pytest.fail(why + " (set LOCALSYM_OFFLINE_OK=1 to skip these tests offline)", pytrace=False)


def _fetch(dest: Path) -> None:
    """pip download the sdist, extract the .jinja files into a temp dir, then rename it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        dl = Path(tmp) / "dl"
        # --no-binary for this package only: the sdist is what holds the vendored tree, while the build
        # tools pip installs to read its metadata may come as wheels (faster, fewer ways to fail).
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                "llama-cpp-python",
                f"llama-cpp-python=={VERSION}",
                "-d",
                str(dl),
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            lines = (r.stderr.strip() or r.stdout.strip()).splitlines()
            errors = [ln for ln in lines if ln.startswith("ERROR")] or lines[-3:]
            raise RuntimeError("pip download failed: " + " / ".join(errors))
        sdists = list(dl.glob("llama_cpp_python-*.tar.gz"))
        if not sdists:
            raise RuntimeError(f"pip download left no sdist in {dl}: {sorted(p.name for p in dl.iterdir())}")
        out = Path(tmp) / "templates"
        out.mkdir()
        with tarfile.open(sdists[0]) as tar:
            for m in tar:
                parent, _, name = m.name.rpartition("/")
                if m.isfile() and (parent + "/").endswith(_MEMBER_DIR) and name.endswith(".jinja"):
                    f = tar.extractfile(m)
                    assert f is not None
                    (out / name).write_bytes(f.read())
        if not any(out.glob("*.jinja")):
            raise RuntimeError(f"{sdists[0].name} has no {_MEMBER_DIR}*.jinja")
        try:
            out.rename(dest)
        except OSError:  # another run got there first, or a stale empty dir: keep a complete one
            if not any(dest.glob("*.jinja")):
                shutil.rmtree(dest, ignore_errors=True)
                out.rename(dest)
