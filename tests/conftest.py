"""Shared fixtures: real models pulled once into a cache, an isolated LOCALSYM_HOME per test."""

from __future__ import annotations

import os

# CUDA kernels run on Numba's simulator unless a run asks for the real GPU
# (NUMBA_ENABLE_CUDASIM=0 on a machine with one). Must be set before numba.cuda loads.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

# Pulled models live in one LOCALSYM_HOME that survives test runs; every test then gets a
# fresh home of its own with those files hard-linked in (instant, no copies).
MODEL_CACHE = Path(os.environ.get("LOCALSYM_TEST_MODELS", Path.home() / ".cache" / "localsym-test-models"))
SMOL = "smollm2-135m"
GEMMA = "gemma3-270m"


def _pull(name: str) -> Path:
    env = dict(os.environ, LOCALSYM_HOME=str(MODEL_CACHE))
    r = subprocess.run([sys.executable, "-m", "localsym", "pull", "-q", name], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(f"could not pull {name}: {r.stderr.strip()}")
    return Path(r.stdout.split(": ", 1)[1].split(" (", 1)[0])


@pytest.fixture(scope="session")
def smol_path() -> Path:
    return _pull(SMOL)


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    return _pull(GEMMA)


def register_cached(name: str) -> None:
    """Register a model pulled into MODEL_CACHE in the current LOCALSYM_HOME: its file
    hard-linked (instant, no copy), its registry entry as the store writes it."""
    from localsym import paths

    entry = dict(json.loads((MODEL_CACHE / "data" / "models" / "registry.json").read_text())[name])
    models = paths.ensure(paths.models_dir())
    dest = models / Path(entry["path"]).name
    if not dest.exists():
        try:
            os.link(entry["path"], dest)
        except OSError:
            shutil.copy2(entry["path"], dest)
    entry["path"] = str(dest)
    reg_path = models / "registry.json"
    reg = json.loads(reg_path.read_text()) if reg_path.exists() else {}
    reg[name] = entry
    reg_path.write_text(json.dumps(reg))


@pytest.fixture
def home(tmp_path, monkeypatch, smol_path) -> Path:
    """An isolated LOCALSYM_HOME with the default model already registered."""
    h = tmp_path / "home"
    monkeypatch.setenv("LOCALSYM_HOME", str(h))
    register_cached(SMOL)
    return h


@contextmanager
def module_home(tmp_path_factory: pytest.TempPathFactory, tag: str, **env: str) -> Iterator[Path]:
    """A LOCALSYM_HOME (and ``env``) for a whole test module, SmolLM2 registered: what a
    module-scoped server fixture needs (the per-test ``home`` fixture cannot serve one)."""
    h = tmp_path_factory.mktemp(tag) / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALSYM_HOME", str(h))
        for k, v in env.items():
            mp.setenv(k, v)
        register_cached(SMOL)
        yield h


@pytest.fixture(scope="session")
def smol_engine(smol_path):
    """One loaded SmolLM2 engine for read-mostly tests (each test clears what it uses)."""
    from localsym.runtime.engine import Engine, RunOptions

    eng = Engine(smol_path, RunOptions(n_ctx=2048, n_seq_max=4, vram="cpu"))
    yield eng
    eng.close()


def run_cli(*args: str, home: Path, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "localsym", *args], env=env, capture_output=True, text=True, timeout=timeout, input=stdin
    )
