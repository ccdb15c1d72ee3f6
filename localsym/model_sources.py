"""GGUFs that other tools already keep on this machine: Ollama, LM Studio, the Hugging Face
hub cache and llama.cpp's download cache.

A user coming from those tools has gigabytes of models on disk, and this machine may not be
able to download more; we find them where they are and use them in place, never copying.
Discovery only reads: files are opened read-only and nothing (no lock, no cache, no index)
is ever written into another tool's store. Every location is read from the environment at
call time, so a changed ``HOME`` or ``OLLAMA_MODELS`` is honoured at once.

Anything wrong (a broken manifest, a missing blob, a partial download, a split model with a
part missing) comes back as a one-line ``Problem``, never as an exception.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from localsym.errors import BadModelFile, LocalsymError, ModelNotFound
from localsym.runtime.gguf_file import GGUFHeader, check_complete, read_header

OLLAMA, LMSTUDIO, HF, LLAMACPP = "ollama", "lmstudio", "hf", "llama.cpp"
SOURCES = (OLLAMA, LMSTUDIO, HF, LLAMACPP)
# The prefix a user writes (`pull ollama:llama3.2:3b`) -> the source it names.
PREFIXES = {"ollama": OLLAMA, "lmstudio": LMSTUDIO, "hf": HF, "llamacpp": LLAMACPP, "llama.cpp": LLAMACPP}
_PREFIX_OF = {OLLAMA: "ollama", LMSTUDIO: "lmstudio", HF: "hf", LLAMACPP: "llamacpp"}

OLLAMA_MODEL = "application/vnd.ollama.image.model"
_OLLAMA_TEXT = {
    "template": "application/vnd.ollama.image.template",
    "system": "application/vnd.ollama.image.system",
    "license": "application/vnd.ollama.image.license",
}
OLLAMA_PARAMS = "application/vnd.ollama.image.params"
_OLLAMA_REGISTRY = "registry.ollama.ai"
_TEXT_LIMIT = 1 << 20  # a template, system prompt or license is a few KiB; never read a mislabelled weight blob
_SPLIT = re.compile(r"^(?P<stem>.+)-(?P<i>\d{5})-of-(?P<n>\d{5})\.gguf$", re.IGNORECASE)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Discovered:
    """One usable model in another tool's store, named as that tool names it."""

    name: str
    source: str  # one of SOURCES
    path: Path  # the file to load (a split model's first part: llama.cpp finds the rest beside it)
    size: int  # bytes, all parts together
    sha256: str = ""  # when known without hashing: Ollama's digest, a Hugging Face blob's name
    files: tuple[Path, ...] = ()  # every part, the first one first
    template: str | None = None  # Ollama's layers (Go template syntax, not the GGUF's Jinja)
    system: str | None = None
    params: dict[str, Any] | None = field(default=None, compare=False)
    license: str | None = None

    @property
    def ref(self) -> str:
        """The unambiguous way to name it: ``ollama:llama3.2:3b``, ``hf:owner/repo/file.gguf``."""
        return f"{_PREFIX_OF[self.source]}:{self.name}"

    def extras(self) -> dict[str, Any] | None:
        """Ollama's template, system prompt, parameters and license, or None when it has none."""
        d = {"template": self.template, "system": self.system, "params": self.params, "license": self.license}
        return d if any(v is not None for v in d.values()) else None


@dataclass(frozen=True)
class Problem:
    """Something found that cannot be used, in one line for the user."""

    source: str
    path: Path
    problem: str
    name: str = ""  # the name it would have had, when known (so `pull NAME` can say what is wrong)


class Found(NamedTuple):
    models: list[Discovered]
    problems: list[Problem]


# --- where each tool keeps its models -------------------------------------------------------


def _env_path(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else None


def _cache_home() -> Path:
    return _env_path("XDG_CACHE_HOME") or Path.home() / ".cache"


def ollama_dirs() -> list[Path]:
    """``OLLAMA_MODELS`` when set (Ollama then uses only it), else the user's and the system service's stores."""
    own = _env_path("OLLAMA_MODELS")
    if own:
        return [own]
    return [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]


def lmstudio_dirs() -> list[Path]:
    return [Path.home() / ".lmstudio" / "models", Path.home() / ".cache" / "lm-studio" / "models"]


def hf_hub_dir() -> Path:
    """huggingface_hub's own rule: HF_HUB_CACHE, else HF_HOME/hub, else the user cache."""
    hub = _env_path("HF_HUB_CACHE")
    if hub:
        return hub
    home = _env_path("HF_HOME") or _cache_home() / "huggingface"
    return home / "hub"


def llamacpp_dir() -> Path:
    """llama.cpp's rule (common's fs_get_cache_directory): LLAMA_CACHE, else the platform cache."""
    own = _env_path("LLAMA_CACHE")
    if own:
        return own
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "llama.cpp"
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "llama.cpp"
    return _cache_home() / "llama.cpp"


def _readable_dirs(dirs: Iterable[Path]) -> list[Path]:
    out, seen = [], set()
    for d in dirs:
        try:
            if not d.is_dir() or not os.access(d, os.R_OK | os.X_OK):
                continue
            key = d.resolve()
        except OSError:
            continue
        if key not in seen:
            seen.add(key)
            out.append(d)
    return out


# --- checking a file without trusting it --------------------------------------------------------


def _one_line(message: str, path: Path) -> str:
    """An error message without its leading path (the problem line shows the path already)."""
    for p in (str(path), str(Path(path).resolve())):
        if message.startswith(p + ": "):
            message = message[len(p) + 2 :]
    return message.splitlines()[0] if message else "unreadable"


def _inspect(path: Path) -> tuple[GGUFHeader | None, str | None]:
    """(header, None) for a complete GGUF, (None, why) otherwise."""
    if path.is_symlink() and not path.exists():
        return None, f"partial download: its blob {os.readlink(path)} is missing"
    try:
        header = read_header(path)
        check_complete(header)
    except LocalsymError as e:
        why = _one_line(str(e), path)
        if why.startswith("truncated GGUF"):
            why = "partial download: " + why
        return None, why
    except (OSError, ValueError) as e:
        return None, f"cannot read ({e})"
    return header, None


def _is_projector(path: Path, header: GGUFHeader | None) -> bool:
    """A vision projector (mmproj) rides beside a model in the same folder but is no model itself."""
    if path.name.lower().startswith("mmproj"):
        return True
    if header is None:
        return False
    return header.metadata.get("general.architecture") == "clip" or header.metadata.get("general.type") == "mmproj"


def _group_splits(files: Sequence[Path]) -> tuple[list[list[Path]], list[tuple[Path, str]]]:
    """GGUF files -> one list of parts per model (a split model's first part first) and the split
    models with a part missing, as (path, why). Parts belong together only within one folder."""
    singles: list[list[Path]] = []
    splits: dict[tuple[Path, str, int], dict[int, Path]] = {}
    for f in files:
        m = _SPLIT.match(f.name)
        if m and int(m["n"]) > 1:
            splits.setdefault((f.parent, m["stem"], int(m["n"])), {})[int(m["i"])] = f
        else:
            singles.append([f])
    incomplete = []
    for (parent, stem, n), parts in splits.items():
        missing = [i for i in range(1, n + 1) if i not in parts]
        if missing:
            first = parts.get(1) or parent / f"{stem}-{1:05d}-of-{n:05d}.gguf"
            shown = ", ".join(map(str, missing[:5])) + (", ..." if len(missing) > 5 else "")
            incomplete.append((first, f"incomplete split GGUF: part {shown} of {n} missing"))
        else:
            singles.append([parts[i] for i in range(1, n + 1)])
    singles.sort(key=lambda parts: str(parts[0]))
    return singles, incomplete


def _check_parts(parts: Sequence[Path]) -> tuple[GGUFHeader | None, str | None]:
    """The first part's header when every part is a complete GGUF, else why not."""
    first = None
    for i, p in enumerate(parts):
        header, why = _inspect(p)
        if why:
            return None, why if i == 0 else f"part {i + 1} of {len(parts)} ({p.name}): {why}"
        first = first or header
    return first, None


def blob_sha256(path: str | Path) -> str | None:
    """The sha256 a blob store names a file by (Ollama's ``blobs/sha256-<hex>``, the HF cache's
    ``blobs/<hex>``, links followed), or None: a digest known without hashing gigabytes."""
    try:
        blob = Path(path).resolve()
    except OSError:
        return None
    digest = blob.name.removeprefix("sha256-")
    return digest if blob.parent.name == "blobs" and _HEX64.match(digest) else None


def _size(parts: Sequence[Path]) -> int:
    return sum(p.stat().st_size for p in parts)


# --- Ollama ---------------------------------------------------------------------------------


def _ollama_name(registry: str, namespace: str, model: str, tag: str) -> str:
    """The name Ollama itself shows: short for its own library, longer for anything else."""
    if registry == _OLLAMA_REGISTRY:
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{registry}/{namespace}/{model}:{tag}"


def _ollama_canonical(name: str) -> str:
    """What a user types -> Ollama's own spelling: the registry prefix dropped, ``:latest`` added."""
    for prefix in (f"{_OLLAMA_REGISTRY}/library/", f"{_OLLAMA_REGISTRY}/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def _blob(root: Path, digest: str) -> Path:
    """``sha256:<hex>`` -> ``blobs/sha256-<hex>`` (old Ollama builds kept the colon)."""
    new = root / "blobs" / digest.replace(":", "-")
    old = root / "blobs" / digest
    return new if new.exists() or not old.exists() else old


def _read_text(path: Path) -> str:
    with path.open("rb") as f:
        return f.read(_TEXT_LIMIT).decode("utf-8", errors="replace")


def _ollama_manifests(root: Path) -> Iterator[tuple[str, Path]]:
    """(name, manifest path) for each ``manifests/<registry>/<namespace>/<model>/<tag>``."""
    base = root / "manifests"
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(base).parts
        if len(rel) != 3:
            continue
        for tag in sorted(filenames):
            if not tag.startswith("."):
                yield _ollama_name(*rel, tag), Path(dirpath) / tag


def _ollama_read(root: Path, name: str, manifest: Path) -> tuple[dict[str, Any] | None, list[Problem]]:
    """A manifest -> the model's blob and Ollama's extras, or the problems that stop it."""

    def problem(why: str, path: Path = manifest) -> Problem:
        return Problem(OLLAMA, path, why, name)

    try:
        data = json.loads(_read_text(manifest))
    except (OSError, ValueError) as e:
        return None, [problem(f"unreadable manifest ({_one_line(str(e), manifest)})")]
    layers = data.get("layers") if isinstance(data, dict) else None
    if not isinstance(layers, list):
        return None, [problem("manifest has no layers")]
    layers = [x for x in layers if isinstance(x, dict) and isinstance(x.get("digest"), str)]
    model = next((x for x in layers if x.get("mediaType") == OLLAMA_MODEL), None)
    if model is None:
        return None, [problem("manifest names no model layer (a vision-only or adapter manifest?)")]
    blob = _blob(root, model["digest"])
    if not blob.exists():
        return None, [problem(f"model blob {blob.name} is missing (an interrupted `ollama pull`?)")]
    found: dict[str, Any] = {"blob": blob, "sha256": model["digest"].split(":", 1)[-1]}
    problems = []
    for key, media in _OLLAMA_TEXT.items():
        texts = []
        for layer in (x for x in layers if x.get("mediaType") == media):
            try:
                texts.append(_read_text(_blob(root, layer["digest"])))
            except OSError:
                problems.append(problem(f"its {key} blob {layer['digest']} is missing"))
        found[key] = "\n\n".join(texts) if texts else None
    found["params"] = None
    for layer in (x for x in layers if x.get("mediaType") == OLLAMA_PARAMS):
        try:
            params = json.loads(_read_text(_blob(root, layer["digest"])))
            found["params"] = params if isinstance(params, dict) else None
        except (OSError, ValueError) as e:
            problems.append(problem(f"its params blob {layer['digest']} is unreadable ({e})"))
    return found, problems


def _scan_ollama() -> Found:
    models, problems, seen = [], [], set()
    for root in _readable_dirs(ollama_dirs()):
        for name, manifest in _ollama_manifests(root):
            if name in seen:
                continue  # the same name in a second store: Ollama would use the first
            found, probs = _ollama_read(root, name, manifest)
            problems += probs
            if found is None:
                continue
            blob = found.pop("blob")
            _, why = _inspect(blob)
            if why:
                problems.append(Problem(OLLAMA, blob, why, name))
                continue
            seen.add(name)
            models.append(Discovered(name, OLLAMA, blob, blob.stat().st_size, files=(blob,), **found))
    return Found(models, problems)


def ollama_extras(path: str | Path, name: str | None = None) -> dict[str, Any] | None:
    """Ollama's template, system prompt, params and license for a model blob (keys always
    present, values None when Ollama has none), or None when no manifest names ``path``.

    The GGUF's own chat template comes first; this lets ``show`` say when Ollama's differs,
    and a session use Ollama's system prompt and stop words when the GGUF has none. Several
    tags may share one blob: ``name`` picks one, else the one that carries the most extras."""
    try:
        blob = Path(path).resolve()
    except OSError:
        return None
    if blob.parent.name != "blobs" or not blob.name.startswith("sha256"):
        return None
    root = blob.parent.parent
    best = None
    for tag, manifest in _ollama_manifests(root):
        if name is not None and tag != _ollama_canonical(name):
            continue
        found, _ = _ollama_read(root, tag, manifest)
        if not found or found["blob"].resolve() != blob:
            continue
        extras = {k: found[k] for k in ("template", "system", "params", "license")}
        if best is None or sum(v is not None for v in extras.values()) > sum(v is not None for v in best.values()):
            best = extras
    return best


# --- LM Studio, the Hugging Face cache, llama.cpp's cache -----------------------------------------


def _ggufs(folder: Path) -> list[Path]:
    """Every ``*.gguf`` under ``folder`` (links included, not followed into other folders)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if f.lower().endswith(".gguf") and not f.startswith(".")]
    return out


def _add(found: Found, source: str, name: str, parts: list[Path], seen: set[str], sha256: str = "") -> None:
    """Check a candidate's parts; keep it as a model or note why not."""
    if name in seen:
        return
    header, why = _check_parts(parts)
    if why:
        found.problems.append(Problem(source, parts[0], why, name))
        return
    if _is_projector(parts[0], header):
        return
    seen.add(name)
    found.models.append(Discovered(name, source, parts[0], _size(parts), sha256, tuple(parts)))


def _scan_lmstudio() -> Found:
    found, seen = Found([], []), set[str]()
    for root in _readable_dirs(lmstudio_dirs()):
        for owner in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for repo in sorted(p for p in owner.iterdir() if p.is_dir() and not p.name.startswith(".")):
                groups, incomplete = _group_splits(_ggufs(repo))
                groups = [g for g in groups if not g[0].name.lower().startswith("mmproj")]
                several = len(groups) + len(incomplete) > 1
                for parts in groups:
                    rel = parts[0].relative_to(repo).as_posix()
                    _add(found, LMSTUDIO, f"{owner.name}/{repo.name}" + (f"/{rel}" if several else ""), parts, seen)
                for path, why in incomplete:
                    rel = path.relative_to(repo).as_posix()
                    found.problems.append(Problem(LMSTUDIO, path, why, f"{owner.name}/{repo.name}/{rel}"))
    return found


def _hf_snapshots(repo: Path) -> list[Path]:
    """The repo's snapshots, the one ``refs/main`` names first, then the newest."""
    snaps = [p for p in (repo / "snapshots").iterdir() if p.is_dir()] if (repo / "snapshots").is_dir() else []
    try:
        main = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
    except OSError:
        main = ""
    return sorted(snaps, key=lambda p: (p.name != main, -p.stat().st_mtime))


def _scan_hf() -> Found:
    found, seen = Found([], []), set[str]()
    for root in _readable_dirs([hf_hub_dir()]):
        for repo in sorted(root.glob("models--*")):
            repo_id = "/".join(repo.name[len("models--") :].split("--"))
            for snap in _hf_snapshots(repo):
                groups, incomplete = _group_splits(_ggufs(snap))
                for parts in groups:
                    name = f"{repo_id}/{parts[0].relative_to(snap).as_posix()}"
                    _add(found, HF, name, parts, seen, blob_sha256(parts[0]) or "")
                for path, why in incomplete:
                    name = f"{repo_id}/{path.relative_to(snap).as_posix()}"
                    if name not in seen:
                        found.problems.append(Problem(HF, path, why, name))
                        seen.add(name)
    return found


def _scan_llamacpp() -> Found:
    found, seen = Found([], []), set[str]()
    for root in _readable_dirs([llamacpp_dir()]):
        files = sorted(p for p in root.iterdir() if p.name.lower().endswith(".gguf") and not p.is_dir())
        groups, incomplete = _group_splits(files)
        for parts in groups:
            _add(found, LLAMACPP, parts[0].name, parts, seen)
        for path, why in incomplete:
            found.problems.append(Problem(LLAMACPP, path, why, path.name))
        for p in sorted(root.glob("*.gguf.downloadInProgress")):
            found.problems.append(Problem(LLAMACPP, p, "partial download (interrupted, or still downloading)"))
    return found


_SCANNERS = {OLLAMA: _scan_ollama, LMSTUDIO: _scan_lmstudio, HF: _scan_hf, LLAMACPP: _scan_llamacpp}


def discover(sources: Iterable[str] | None = None) -> Found:
    """Every model the other tools hold (those in ``sources``, default all), and what is wrong with the rest."""
    models, problems = [], []
    for source in sources or SOURCES:
        try:
            found = _SCANNERS[source]()
        except OSError as e:  # a store that vanished or turned unreadable mid-scan
            where = Path(getattr(e, "filename", "") or "?")
            found = Found([], [Problem(source, where, f"cannot read ({e.strerror or e})")])
        models += found.models
        problems += found.problems
    return Found(models, problems)


# --- names -------------------------------------------------------------------------------------


def split_ref(ref: str) -> tuple[str | None, str]:
    """``ollama:llama3.2:3b`` -> ("ollama", "llama3.2:3b"); a name without a source prefix -> (None, name)."""
    head, sep, rest = ref.partition(":")
    if sep and head.lower() in PREFIXES and rest:
        return PREFIXES[head.lower()], rest
    return None, ref


def _same(a: str, b: str, source: str) -> bool:
    a, b = a.casefold(), b.casefold()
    return a == b or (source == OLLAMA and a == _ollama_canonical(b))


def match(name: str, models: Sequence[Discovered], source: str | None = None) -> list[Discovered]:
    """The models ``name`` means: exact names first (Ollama's ``:latest`` implied), else those it
    names up to a tag or a file (``llama3.2`` -> ``llama3.2:3b``, ``hf`` ``owner/repo`` -> its file)."""
    pool = [m for m in models if source is None or m.source == source]
    exact = [m for m in pool if _same(m.name, name, m.source)]
    if exact:
        return exact
    key = name.casefold()
    return [m for m in pool if m.name.casefold().startswith((key + ":", key + "/"))]


def _refs(models: Sequence[Discovered], limit: int = 6) -> str:
    shown = ", ".join(m.ref for m in models[:limit])
    return shown + (f" and {len(models) - limit} more" if len(models) > limit else "")


def lookup(ref: str) -> Discovered | None:
    """The one model ``ref`` names, or None when it names nothing found; ``ModelNotFound`` when it
    names several, ``BadModelFile`` when it names one that is broken (a partial download ...)."""
    source, name = split_ref(ref)
    found = discover([source] if source else None)
    hits = match(name, found.models, source)
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ModelNotFound(f"{ref!r} is ambiguous: it names {_refs(hits)}; give one of those")
    for p in found.problems:
        if p.name and (source is None or p.source == source) and _same(p.name, name, p.source):
            raise BadModelFile(f"{_PREFIX_OF[p.source]}:{p.name} cannot be used: {p.problem} ({p.path})")
    return None


def hint(ref: str) -> str:
    """A short 'did you mean' for a name nothing matched ('' when nothing comes close)."""
    source, name = split_ref(ref)
    key = name.casefold().split(":")[0]
    models = discover([source] if source else None).models
    near = [m for m in models if key and key in m.name.casefold()]
    return f"; found: {_refs(near)}" if near else ""


def find(ref: str) -> Discovered:
    """Like ``lookup``, but an unknown name is an error too (with the near matches)."""
    hit = lookup(ref)
    if hit is None:
        source, _ = split_ref(ref)
        where = f"in {source}'s store" if source else "in Ollama, LM Studio, the HF cache or llama.cpp's cache"
        raise ModelNotFound(f"no model {ref!r} {where}{hint(ref)} (see `localsym list --all`)")
    return hit
