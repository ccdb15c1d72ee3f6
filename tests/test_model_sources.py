"""GGUFs other tools already hold (Ollama, LM Studio, the Hugging Face cache, llama.cpp's cache),
used in place: each store's real layout is built in tmp_path around the real SmolLM2 file,
hard-linked (never copied), with HOME and the tools' variables pointed there."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from gguf import GGUFWriter

from localsym import model_sources, model_store
from localsym.catalog import load_catalog
from localsym.errors import BadModelFile, ModelNotFound

SMOL_SHA = load_catalog()["smollm2-135m"].sha256
HF_REV = "0123456789abcdef0123456789abcdef01234567"
TEMPLATE = "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}<|im_start|>user\n{{ .Prompt }}"
SYSTEM = "You are a terse assistant."
PARAMS = {"stop": ["<|im_end|>"], "temperature": 0.2}
LICENSE = "Apache License 2.0"


def _link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError as e:
        pytest.skip(f"cannot hard-link the test model into tmp_path ({e}); a 100 MB copy is not worth it")
    return dst


def _tiny_gguf(path: Path, arch: str = "llama") -> Path:
    """A small complete GGUF (one tensor): stands in for split parts and a projector."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w = GGUFWriter(str(path), arch)
    w.add_tensor("x.weight", np.zeros(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _blob(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "blobs" / f"sha256-{digest}").write_bytes(data)
    return f"sha256:{digest}"


def _manifest(root: Path, rel: str, layers: list[tuple[str, str]] | None = None, text: str | None = None) -> Path:
    p = root / "manifests" / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": "sha256:00"},
        "layers": [
            {"mediaType": f"application/vnd.ollama.image.{kind}", "digest": d, "size": 1} for kind, d in layers or []
        ],
    }
    p.write_text(text if text is not None else json.dumps(body))
    return p


def _snapshot(root: Path) -> dict[str, tuple[int, int, bool]]:
    """Every entry under root: (mtime, size, is a link), links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath, n)
            st = os.lstat(p)
            out[str(p.relative_to(root))] = (st.st_mtime_ns, st.st_size, p.is_symlink())
    return out


@pytest.fixture
def stores(tmp_path, monkeypatch, smol_path) -> dict[str, Path]:
    """Every tool's store, with one good copy of SmolLM2 each and something wrong beside it."""
    user = tmp_path / "user"
    monkeypatch.setenv("HOME", str(user))
    for var in ("XDG_CACHE_HOME", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    s = {
        "root": tmp_path / "stores",
        "ollama": tmp_path / "stores" / "ollama",
        "lmstudio": user / ".lmstudio" / "models",
        "hf": tmp_path / "stores" / "hf-hub",
        "llama.cpp": tmp_path / "stores" / "llama-cache",
    }
    monkeypatch.setenv("OLLAMA_MODELS", str(s["ollama"]))
    monkeypatch.setenv("HF_HUB_CACHE", str(s["hf"]))
    monkeypatch.setenv("LLAMA_CACHE", str(s["llama.cpp"]))
    with smol_path.open("rb") as f:
        head = f.read(2 << 20)  # the header (1.8 MB) and a little of the weights: a partial download

    # Ollama: one blob under several names, its template/system/params/license layers, and breakage.
    o = s["ollama"]
    s["blob"] = _link(smol_path, o / "blobs" / f"sha256-{SMOL_SHA}")
    model = ("model", f"sha256:{SMOL_SHA}")
    extras = [
        ("template", _blob(o, TEMPLATE.encode())),
        ("system", _blob(o, SYSTEM.encode())),
        ("params", _blob(o, json.dumps(PARAMS).encode())),
        ("license", _blob(o, LICENSE.encode())),
    ]
    _manifest(o, "registry.ollama.ai/library/smollm2/135m", [model, *extras])
    _manifest(o, "registry.ollama.ai/library/smollm2/instruct", [model])
    _manifest(o, "registry.ollama.ai/someone/tiny/q4", [model])
    _manifest(o, "hf.co/owner/Smol-GGUF/Q4_1", [model])
    _manifest(o, "registry.ollama.ai/library/broken/latest", text="{not json")
    _manifest(o, "registry.ollama.ai/library/nolayer/latest", [extras[0]])
    _manifest(o, "registry.ollama.ai/library/gone/latest", [("model", "sha256:" + "ab" * 32)])
    _manifest(o, "registry.ollama.ai/library/partial/latest", [("model", _blob(o, head))])

    # LM Studio: a repo with the model and a vision projector; a repo with a two-part split model.
    _link(smol_path, s["lmstudio"] / "owner" / "Smol-GGUF" / "SmolLM2.Q4_1.gguf")
    _tiny_gguf(s["lmstudio"] / "owner" / "Smol-GGUF" / "mmproj-smol-f16.gguf", arch="clip")
    for i in (1, 2):
        _tiny_gguf(s["lmstudio"] / "owner" / "Split-GGUF" / f"x-0000{i}-of-00002.gguf")

    # Hugging Face hub cache: snapshot files are links into blobs/; one link dangles (partial).
    repo = s["hf"] / "models--owner--Smol-GGUF"
    _link(smol_path, repo / "blobs" / SMOL_SHA)
    snap = repo / "snapshots" / HF_REV
    snap.mkdir(parents=True)
    (snap / "SmolLM2.Q4_1.gguf").symlink_to(Path("..", "..", "blobs", SMOL_SHA))
    (snap / "SmolLM2.Q8_0.gguf").symlink_to(Path("..", "..", "blobs", "cd" * 32))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(HF_REV)

    # llama.cpp's cache: a good file, a cut one, a split with a part missing, a download under way.
    c = s["llama.cpp"]
    _link(smol_path, c / "owner_Smol-GGUF_SmolLM2.Q4_1.gguf")
    (c / "owner_Cut-GGUF_cut.gguf").write_bytes(head)
    _tiny_gguf(c / "y-00001-of-00003.gguf")
    _tiny_gguf(c / "y-00003-of-00003.gguf")
    (c / "owner_Next-GGUF_next.gguf.downloadInProgress").write_bytes(b"GGUF")
    return s


def test_discovery_names_sources_and_problems(stores, smol_path):
    before = _snapshot(stores["root"]) | _snapshot(stores["lmstudio"])
    found = model_sources.discover()
    got = {(m.source, m.name): m for m in found.models}
    assert set(got) == {
        ("ollama", "smollm2:135m"),
        ("ollama", "smollm2:instruct"),
        ("ollama", "someone/tiny:q4"),
        ("ollama", "hf.co/owner/Smol-GGUF:Q4_1"),
        ("lmstudio", "owner/Smol-GGUF"),
        ("lmstudio", "owner/Split-GGUF"),
        ("hf", "owner/Smol-GGUF/SmolLM2.Q4_1.gguf"),
        ("llama.cpp", "owner_Smol-GGUF_SmolLM2.Q4_1.gguf"),
    }
    smol = got[("ollama", "smollm2:135m")]
    assert smol.path == stores["blob"] and smol.sha256 == SMOL_SHA and smol.size == smol_path.stat().st_size
    assert smol.ref == "ollama:smollm2:135m"
    assert smol.extras() == {"template": TEMPLATE, "system": SYSTEM, "params": PARAMS, "license": LICENSE}
    assert got[("ollama", "smollm2:instruct")].extras() is None
    split = got[("lmstudio", "owner/Split-GGUF")]  # the first part only; llama.cpp opens the rest
    assert split.path.name == "x-00001-of-00002.gguf" and len(split.files) == 2
    assert split.size == sum(p.stat().st_size for p in split.files)
    hf = got[("hf", "owner/Smol-GGUF/SmolLM2.Q4_1.gguf")]
    assert hf.sha256 == SMOL_SHA and hf.path.is_symlink() and hf.path.resolve().samefile(smol_path)
    assert got[("llama.cpp", "owner_Smol-GGUF_SmolLM2.Q4_1.gguf")].sha256 == ""  # hashed only when pulled

    assert len(found.problems) == 8, found.problems
    problems = {(p.source, p.path.name): p.problem for p in found.problems if p.source != "ollama"}
    by_name = {p.name: p.problem for p in found.problems if p.source == "ollama"}
    assert by_name["broken:latest"].startswith("unreadable manifest")
    assert "no model layer" in by_name["nolayer:latest"]
    assert f"{'ab' * 32}" in by_name["gone:latest"] and "missing" in by_name["gone:latest"]
    assert by_name["partial:latest"].startswith("partial download: truncated GGUF")
    assert problems[("hf", "SmolLM2.Q8_0.gguf")].startswith("partial download")
    assert problems[("llama.cpp", "owner_Cut-GGUF_cut.gguf")].startswith("partial download: truncated GGUF")
    assert problems[("llama.cpp", "y-00001-of-00003.gguf")] == "incomplete split GGUF: part 2 of 3 missing"
    assert "partial download" in problems[("llama.cpp", "owner_Next-GGUF_next.gguf.downloadInProgress")]
    assert all("\n" not in p and "Traceback" not in p for p in problems.values())
    assert _snapshot(stores["root"]) | _snapshot(stores["lmstudio"]) == before  # read-only, always


def test_env_vars_are_read_at_call_time(stores, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    assert model_sources.discover(["ollama", "hf"]).models == []
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(stores["hf"].parent))
    assert model_sources.hf_hub_dir() == stores["hf"].parent / "hub"
    monkeypatch.delenv("HF_HOME")
    assert model_sources.hf_hub_dir() == Path(os.environ["HOME"]) / ".cache" / "huggingface" / "hub"
    monkeypatch.delenv("LLAMA_CACHE")
    assert model_sources.llamacpp_dir() == Path(os.environ["HOME"]) / ".cache" / "llama.cpp"
    monkeypatch.delenv("OLLAMA_MODELS")
    assert model_sources.ollama_dirs()[0] == Path(os.environ["HOME"]) / ".ollama" / "models"


def test_ollama_extras(stores, smol_path):
    assert model_sources.ollama_extras(stores["blob"]) == {
        "template": TEMPLATE,
        "system": SYSTEM,
        "params": PARAMS,
        "license": LICENSE,
    }
    assert model_sources.ollama_extras(smol_path) is None  # not an Ollama blob
    assert model_sources.ollama_extras(stores["blob"], "smollm2:instruct") == dict.fromkeys(
        ("template", "system", "params", "license")
    )  # a tag without layers of its own


def test_names(stores):
    found = model_sources.discover()
    assert [m.name for m in model_sources.match("smollm2:135m", found.models)] == ["smollm2:135m"]
    assert [m.name for m in model_sources.match("registry.ollama.ai/library/smollm2:135m", found.models)] == [
        "smollm2:135m"
    ]
    assert len(model_sources.match("smollm2", found.models)) == 2  # no :latest, two tags
    assert model_sources.split_ref("ollama:smollm2:135m") == ("ollama", "smollm2:135m")
    assert model_sources.split_ref("llamacpp:a.gguf") == ("llama.cpp", "a.gguf")
    assert model_sources.split_ref("smollm2:135m") == (None, "smollm2:135m")
    with pytest.raises(ModelNotFound, match="ambiguous.*ollama:smollm2:135m, ollama:smollm2:instruct"):
        model_sources.lookup("smollm2")
    with pytest.raises(BadModelFile, match="partial download"):
        model_sources.find("ollama:partial")
    with pytest.raises(ModelNotFound, match="no model 'ollama:nope'"):
        model_sources.find("ollama:nope")
    assert model_sources.find("hf:owner/Smol-GGUF").name == "owner/Smol-GGUF/SmolLM2.Q4_1.gguf"


def test_store_pull_resolve_remove_in_place(stores, home, smol_path, monkeypatch):
    before = _snapshot(stores["root"]) | _snapshot(stores["lmstudio"])
    # unrecorded names resolve straight to the other tool's file
    assert model_store.resolve("someone/tiny:q4") == stores["blob"]
    assert model_store.identity(stores["blob"]) == SMOL_SHA  # the blob's name: no hashing, same once pulled
    assert model_store.resolve("hf.co/owner/Smol-GGUF:Q4_1") == stores["blob"]
    assert model_store.resolve("owner/Smol-GGUF").samefile(smol_path)
    assert model_store.resolve("lmstudio:owner/Split-GGUF").name == "x-00001-of-00002.gguf"
    with pytest.raises(ModelNotFound, match="ambiguous"):
        model_store.resolve("smollm2")
    with pytest.raises(ModelNotFound, match="unknown model 'nothing-here'"):
        model_store.resolve("nothing-here")
    with pytest.raises(ModelNotFound, match="no such file"):
        model_store.resolve("./missing.gguf")

    # Ollama and HF name their blobs by sha256: recorded without hashing a byte
    def no_hashing(*a, **k):
        raise AssertionError("hashed a file whose digest was known")

    hashing = model_store.sha256_file
    monkeypatch.setattr(model_store, "sha256_file", no_hashing)
    m = model_store.pull("ollama:smollm2:135m")
    assert (m.name, m.source, m.path, m.sha256) == ("smollm2:135m", "ollama", stores["blob"], SMOL_SHA)
    assert m.extras["system"] == SYSTEM and m.extras["params"] == PARAMS
    hf = model_store.pull("hf:owner/Smol-GGUF/SmolLM2.Q4_1.gguf")
    assert hf.source == "hf" and hf.sha256 == SMOL_SHA
    assert model_store.pull("ollama:smollm2:135m") == m  # idempotent
    monkeypatch.setattr(model_store, "sha256_file", hashing)  # LM Studio and llama.cpp name no digest
    lm = model_store.pull("lmstudio:owner/Smol-GGUF")
    assert lm.sha256 == SMOL_SHA and lm.source == "lmstudio"
    assert model_store.pull("llamacpp:owner_Smol-GGUF_SmolLM2.Q4_1.gguf").source == "llama.cpp"

    recorded = {x.name: x for x in model_store.list_models()}
    assert recorded["smollm2:135m"].extras["template"] == TEMPLATE
    everything = {(x.name, x.source): x for x in model_store.list_models(all=True)}
    assert everything[("smollm2:135m", "ollama")].registered
    assert not everything[("someone/tiny:q4", "ollama")].registered
    assert ("owner/Split-GGUF", "lmstudio") in everything
    assert model_store.resolve("smollm2:135m") == stores["blob"]
    with pytest.raises(BadModelFile, match="truncated"):
        model_store.pull("llamacpp:owner_Cut-GGUF_cut.gguf")
    for name in ("smollm2:135m", "owner/Smol-GGUF/SmolLM2.Q4_1.gguf", "owner/Smol-GGUF"):
        model_store.remove(name)
    assert stores["blob"].exists() and model_store.resolve("owner/Smol-GGUF").exists()
    assert _snapshot(stores["root"]) | _snapshot(stores["lmstudio"]) == before


def test_a_retagged_ollama_model_is_followed(stores, home, tmp_path):
    """`ollama pull` of a newer build moves the name to a new blob and prunes the old one."""
    o = stores["ollama"]
    old = _blob(o, _tiny_gguf(tmp_path / "old.gguf").read_bytes())
    _manifest(o, "registry.ollama.ai/library/tiny2/latest", [("model", old)])
    assert model_store.pull("ollama:tiny2").name == "tiny2:latest"
    new = _blob(o, _tiny_gguf(tmp_path / "new.gguf", arch="qwen2").read_bytes())
    _manifest(o, "registry.ollama.ai/library/tiny2/latest", [("model", new)])
    (o / "blobs" / old.replace(":", "-")).unlink()
    assert model_store.resolve("tiny2:latest").name == new.replace(":", "-")
    assert model_store.pull("ollama:tiny2:latest").sha256 == new.split(":")[1]


def test_cli_list_pull_run_show(stores, home, smol_path):
    before = _snapshot(stores["root"]) | _snapshot(stores["lmstudio"])
    big_before = {p for p in home.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20}

    r = run_cli("list", "--all", home=home)
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert r.stdout.splitlines()[0].split()[:4] == ["NAME", "SIZE", "SHA256", "SOURCE"]
    assert {(row[0], row[4]) for row in rows} >= {
        ("smollm2-135m", "catalog"),
        ("smollm2:135m", "ollama"),
        ("owner/Smol-GGUF", "lmstudio"),
        ("owner/Smol-GGUF/SmolLM2.Q4_1.gguf", "hf"),
        ("owner_Smol-GGUF_SmolLM2.Q4_1.gguf", "llama.cpp"),
    }
    errs = r.stderr.strip().splitlines()
    assert len(errs) == 8 and all(line.startswith("localsym: ") for line in errs), r.stderr
    assert "Traceback" not in r.stderr
    assert "x-00002-of-00002" not in r.stdout  # a split model's later parts stay hidden

    r = run_cli("list", "--all", "--json", home=home)
    out = json.loads(r.stdout)
    names = {(m["name"], m["source"]) for m in out["models"]}
    assert names >= {("smollm2:135m", "ollama"), ("smollm2-135m", "catalog")}
    assert len(out["problems"]) == 8 and all(set(p) == {"path", "problem", "source"} for p in out["problems"])
    assert [m["name"] for m in json.loads(run_cli("list", "--json", home=home).stdout)] == ["smollm2-135m"]

    r = run_cli("pull", "ollama:smollm2:135m", home=home)
    assert r.returncode == 0, r.stderr
    assert "smollm2:135m" in r.stdout and "in place" in r.stdout
    reg = json.loads((home / "data" / "models" / "registry.json").read_text())["smollm2:135m"]
    assert os.stat(reg["path"]).st_ino == stores["blob"].stat().st_ino == smol_path.stat().st_ino
    assert reg["source"] == "ollama" and reg["extras"]["params"] == PARAMS
    assert {p for p in home.rglob("*") if p.is_file() and p.stat().st_size > 1 << 20} == big_before  # no copy

    r = run_cli("run", "smollm2:135m", "Say hi", "-n", "4", home=home)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    r = run_cli("show", "smollm2:135m", home=home)
    assert r.returncode == 0 and "llama" in r.stdout and "Q4_1" in r.stdout, r.stderr
    # Ollama's system prompt and stop words are used; its Go template is not (the GGUF's is)
    assert SYSTEM in r.stdout and "'<|im_end|>'" in r.stdout and "GGUF's own, which is used" in r.stdout
    from localsym.session import RunOptions, Session

    with Session.open("ollama-defaults", "smollm2:135m", RunOptions(n_ctx=1024, vram="cpu")) as s:
        assert s.config.system == SYSTEM and "<|im_end|>" in s.ask("Say hi").params.stop
    r = run_cli("show", "owner/Smol-GGUF", home=home)  # LM Studio's name, never pulled
    assert r.returncode == 0 and str(stores["lmstudio"]) in r.stdout, r.stderr

    r = run_cli("pull", "ollama:partial", home=home)
    assert r.returncode == 1 and "partial download" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("run", "smollm2", "hi", home=home)
    assert r.returncode == 1 and "ambiguous" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    assert run_cli("rm", "smollm2:135m", home=home).returncode == 0
    assert stores["blob"].exists()
    assert _snapshot(stores["root"]) | _snapshot(stores["lmstudio"]) == before


def _split_copy(src: Path, dst_dir: Path, max_tensors: int = 120) -> Path:
    """A real GGUF rewritten as a split model (NAME-0000i-of-0000N.gguf) by gguf's writer."""
    import gguf

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(
        str(dst_dir / "smol.gguf"), r.fields["general.architecture"].contents(), split_max_tensors=max_tensors
    )
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        kind = f.types[0]
        w.add_key_value(name, f.contents(), kind, sub_type=f.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst_dir / "smol-00001-of-00003.gguf"


def test_a_split_gguf_loads_as_one_model(home, smol_path, tmp_path):
    first = _split_copy(smol_path, tmp_path)
    r = run_cli("show", str(first), "--json", home=home)
    assert r.returncode == 0, r.stderr
    whole = json.loads(run_cli("show", "smollm2-135m", "--json", home=home).stdout)
    assert json.loads(r.stdout)["n_params"] == whole["n_params"]  # every part counted
    r = run_cli("run", str(first), "What is 2+2? Answer with a number.", "-n", "8", home=home)
    assert r.returncode == 0 and "4" in r.stdout, r.stderr
    (tmp_path / "smol-00003-of-00003.gguf").unlink()
    r = run_cli("run", str(first), "hi", home=home)
    assert r.returncode == 1 and "part 3 of 3 is missing" in r.stderr and "Traceback" not in r.stderr
