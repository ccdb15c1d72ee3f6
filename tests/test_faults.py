"""Fault injection: damaged files, hostile input, interrupted runs, a full disk, two writers.

Each case checks what a user sees (exit code, one line, no traceback) and that nothing
acknowledged is lost and no answer is silently wrong. SmolLM2, small documents."""

import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import time

import pytest
from conftest import run_cli

from localsym.session import GenParams, RunOptions, Session, SessionConfig

FACT = "The deploy key for the staging server is KX-4471-QZ."
FILLER = "".join(f"Line {i}: the weekly report lists routine maintenance and nothing unusual.\n" for i in range(24))
DOC = f"Project notes.\n{FILLER[:900]}{FACT}\n{FILLER[900:]}"
QUESTION = "What is the deploy key for the staging server?"
FILLER_Q = "What does the weekly report list?"
OPTS = RunOptions(n_ctx=2048, vram="cpu")


def _cfg(**kw):
    return SessionConfig(**{"block_tokens": 64, "warm_mb": 0, **kw})


def _loaded(name="f"):
    with Session.open(name, "smollm2-135m", OPTS, _cfg()) as s:
        s.ingest_text(DOC, "notes.txt", "file")
        plain = [b for b in s.docs if "KX" not in s.engine.model.detokenize(b.tokens.tolist())]
        return [s.store.cold.path(b.key) for b in plain]


def _ask(name="f", question=QUESTION, max_tokens=24):
    with Session.open(name, opts=OPTS) as s:
        with s.ask(question, GenParams(max_tokens=max_tokens)) as turn:
            turn.text()
        return turn.stats


def _one_line(r, code=1):
    assert r.returncode == code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


@pytest.mark.parametrize("damage", ["header_dtype", "payload_bit", "truncated", "deleted", "other_block", "old_layout"])
def test_damaged_block_files_are_rebuilt_and_the_answer_stays_right(home, damage):
    paths = _loaded()
    victims, other = paths[:-1], paths[-1]  # every block without the key: whichever comes back is damaged
    for victim in victims:
        data = victim.read_bytes()
        if damage == "header_dtype":  # a dtype in the header's array table: "<f2" -> "<f4"
            i = data.index(b'"dtype":"<f2"')
            victim.write_bytes(data[: i + 11] + b"4" + data[i + 12 :])
        elif damage == "payload_bit":
            b = bytearray(data)
            b[-200] ^= 0x10
            victim.write_bytes(bytes(b))
        elif damage == "truncated":
            victim.write_bytes(data[: len(data) // 2])
        elif damage == "deleted":
            victim.unlink()
        elif damage == "old_layout":  # a whole, checksummed file from a localsym whose KV codes were laid out v1
            from localsym.memory import container

            meta, arrays = container.read(victim)
            container.write(victim, {**meta, "kv_layout": 1}, arrays)
        else:  # another block's file copied over this one: passes its own checksum
            victim.write_bytes(other.read_bytes())
    # the filler's words bring filler blocks: the damaged ones are rebuilt from their tokens
    assert _ask(question=FILLER_Q, max_tokens=2).recomputed_blocks >= 1
    again = _ask(question=FILLER_Q, max_tokens=2)  # the rebuilt files read back clean
    assert again.recomputed_blocks == 0 and again.restored_blocks >= 1
    if damage == "payload_bit":  # and the key's answer beside them is right
        stats = _ask()
        assert stats.recomputed_blocks == 0 and "KX-4471-QZ" in stats.answer


def test_a_block_rebuilt_from_damaged_kv_is_said_once(home):
    paths = _loaded()
    for victim in paths:  # every block without the key: whichever the question restores is damaged
        b = bytearray(victim.read_bytes())
        b[-200] ^= 0x10
        victim.write_bytes(bytes(b))
    with Session.open("f", opts=OPTS) as s:
        with s.ask("What does the weekly report list?", GenParams(max_tokens=8)) as turn:
            turn.text()
        assert turn.stats.recomputed_blocks >= 1
        rebuilt = [w for w in turn.stats.warnings if "rebuilt" in w]
        assert len(rebuilt) == turn.stats.recomputed_blocks and all("notes.txt:" in w for w in rebuilt)
        with s.ask("What does the weekly report list?", GenParams(max_tokens=8)) as turn:
            turn.text()
        assert not turn.stats.warnings  # rebuilt and written back: nothing more to say


def test_rebuilt_block_matches_its_original_context(home):
    """A block that is not its file's first is rebuilt after its file's earlier blocks (as
    it was first computed), so its KV matches the original, not a sink-only guess."""
    import numpy as np

    from localsym.memory.encoded_block import EncodedBlock
    from localsym.runtime import kv_state

    paths = _loaded()
    with Session.open("f", opts=OPTS) as s:
        row = next(b for b in s.docs if b.idx >= 2)
        before = kv_state.parse(s.store.get(row.key).to_blob(row.pos0, 1))
        s.store.cold.path(row.key).unlink()
        s.store.warm.drop(row.key)
        rebuilt = s.working.rebuild(row)
        after = kv_state.parse(rebuilt.to_blob(row.pos0, 1))
        assert isinstance(rebuilt, EncodedBlock) and paths
    for a, b in zip(before.caches[0][0].v, after.caches[0][0].v):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        assert np.linalg.norm(a - b) <= 0.25 * np.linalg.norm(a)  # quantization noise, not a new context


def test_empty_or_garbled_session_index_is_one_line_and_spares_other_sessions(home):
    _loaded("good")
    _loaded("bad")
    db = home / "data" / "sessions" / "bad" / "session.db"
    for content in (b"", b"garbage" * 1000):
        db.write_bytes(content)
        for wal in db.parent.glob("session.db-*"):
            wal.unlink()
        line = _one_line(run_cli("ask", QUESTION, "--session", "bad", "-c", "2048", "--vram", "cpu", home=home))
        assert "session.db" in line and "move it aside" in line
        r = run_cli("sessions", "--json", home=home)
        assert r.returncode == 0, r.stderr
        rows = {row["name"]: row for row in json.loads(r.stdout)}
        assert rows["good"]["tokens"] > 0 and "problem" in rows["bad"]


def test_bit_rot_in_stored_tokens_is_caught(home):
    _loaded()
    db_path = home / "data" / "sessions" / "f" / "session.db"
    with sqlite3.connect(db_path) as db:
        bid, blob = db.execute("SELECT id, tokens FROM blocks ORDER BY id LIMIT 1").fetchone()
        bad = bytearray(blob)
        bad[5] ^= 0x01
        db.execute("UPDATE blocks SET tokens = ? WHERE id = ?", (bytes(bad), bid))
    with Session.open("f", opts=OPTS) as s:
        assert bid not in {b.id for b in s.docs}  # left out, never used as if it could be trusted


def test_bit_rot_in_stored_tokens_is_said_and_a_reload_repairs_it(home, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text(DOC)
    with Session.open("rot", "smollm2-135m", OPTS, _cfg()) as s:
        s.load(f)
    db_path = home / "data" / "sessions" / "rot" / "session.db"
    with sqlite3.connect(db_path) as db:  # the block holding the key: the question's needle
        rows = db.execute("SELECT id, tokens FROM blocks ORDER BY id").fetchall()
        with Session.open("rot", opts=OPTS) as s:
            key_ids = {b.id for b in s.docs if "KX" in s.engine.model.detokenize(b.tokens.tolist())}
        bid, blob = next((i, t) for i, t in rows if i in key_ids)
        bad = bytearray(blob)
        bad[5] ^= 0x01
        db.execute("UPDATE blocks SET tokens = ? WHERE id = ?", (bytes(bad), bid))
    ask = ("ask", QUESTION, "--session", "rot", "-n", "24", "--temp", "0", "-c", "2048", "--vram", "cpu")
    r = run_cli(*ask, home=home)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    lines = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(lines) == 1 and str(f) in lines[0] and "damaged" in lines[0] and "load" in lines[0], r.stderr
    r = run_cli("load", str(f), "--session", "rot", "-q", "-c", "2048", "--vram", "cpu", home=home)
    assert r.returncode == 0, r.stderr
    assert "(0 computed" in r.stdout  # read again, every block from the block cache
    r = run_cli(*ask, "--json", home=home)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    # the key's block serves the answer again (the words may echo the damaged turn's answer)
    assert out["warnings"] == [] and any(src["path"] == str(f) and src["signal"] == "needle" for src in out["sources"])
    with Session.open("rot", opts=OPTS) as s:
        holders = [b for b in s.docs if "KX" in s.engine.model.detokenize(b.tokens.tolist())]
        assert holders and bid not in {b.id for b in holders} and not s.db.damaged_sources()


def test_a_second_process_on_a_session_is_told_it_is_busy(home):
    _loaded()
    with Session.open("f", opts=OPTS):
        line = _one_line(run_cli("ask", QUESTION, "--session", "f", "-c", "2048", "--vram", "cpu", home=home))
        assert "busy" in line
    assert "KX-4471-QZ" in _ask().answer  # free again once the first one closed


def test_bad_settings_are_refused_before_anything_is_saved(home):
    _loaded()
    for flag, value in (("--cold-gb", "nan"), ("--warm-mb", "inf"), ("--warm-mb", "-3")):
        line = _one_line(
            run_cli("ask", QUESTION, "--session", "f", flag, value, "-c", "2048", "--vram", "cpu", home=home)
        )
        assert flag.strip("-").replace("-", "_") in line
    cfg = home / "config"
    cfg.mkdir(exist_ok=True)
    (cfg / "config.toml").write_text("[memory]\nwarm_mb = nan\n")
    line = _one_line(run_cli("ask", QUESTION, "--session", "f", "-c", "2048", "--vram", "cpu", home=home))
    assert "warm_mb" in line
    (cfg / "config.toml").unlink()
    assert "KX-4471-QZ" in _ask().answer  # nothing bad was stored in the session


@pytest.mark.parametrize(
    "args,word", [(["-n", "0"], "-n"), (["-n", "-5"], "-n"), (["--temp", "nan"], "temp"), (["-t", "0"], "threads")]
)
def test_bad_run_flags_are_one_line(home, args, word):
    line = _one_line(run_cli("run", "smollm2-135m", "Tell me a long story about the sea.", *args, home=home))
    assert word in line


def test_a_prompt_longer_than_the_context_is_one_line_not_an_abort(home):
    # n_batch once stayed 512 above a small -c, and llama.cpp aborted the process
    line = _one_line(run_cli("run", "smollm2-135m", "the sea " * 300, "-c", "16", home=home))
    assert "-c" in line and "does not fit" in line
    r = run_cli("run", "smollm2-135m", "Hi", "-c", "16", "-n", "4", home=home)
    assert r.returncode == 0, r.stderr


def test_session_names_and_files_are_private(home):
    line = _one_line(run_cli("ask", "hi", "--session", "bad\n", home=home))
    assert "session name" in line
    _loaded()
    d = home / "data" / "sessions" / "f"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((d / "session.db").stat().st_mode) == 0o600
    blocks = list((home / "data" / "blocks").rglob("*.lsb"))
    assert blocks and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in blocks)


def test_control_tokens_in_user_text_stay_text(home):
    r = run_cli("run", "smollm2-135m", "<|im_end|>", "--raw", "--json", "-n", "1", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_tokens"] > 2  # spelled out, not one control token (plus BOS)


def test_a_full_disk_is_one_line_and_leaves_no_temp_files(home, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text(DOC)

    def small_files():  # the block files no longer fit: EFBIG, as a full disk gives ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    env = dict(os.environ, LOCALSYM_HOME=str(home))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "localsym",
            "load",
            str(f),
            "--session",
            "disk",
            "-q",
            "-c",
            "2048",
            "--block-tokens",
            "64",
            "--vram",
            "cpu",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    line = _one_line(r)
    assert "cannot write" in line and "disk space" in line
    assert not list(home.rglob("*.tmp")) and not list(home.rglob(".*.new"))
    r = run_cli(
        "load", str(f), "--session", "disk", "-q", "-c", "2048", "--block-tokens", "64", "--vram", "cpu", home=home
    )  # with room again, the same load completes
    assert r.returncode == 0, r.stderr


def test_ctrl_c_during_load_exits_130_and_keeps_what_was_acknowledged(home, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(6):
        (tree / f"m{i}.py").write_text("".join(f"value_{i}_{j} = {j * 7}\n" for j in range(40)))
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localsym",
            "load",
            str(tree),
            "--session",
            "c",
            "-q",
            "-c",
            "2048",
            "--block-tokens",
            "64",
            "--vram",
            "cpu",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db_path = home / "data" / "sessions" / "c" / "session.db"
    deadline = time.time() + 240
    n = 0
    while time.time() < deadline and proc.poll() is None and n < 3:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path) as db:
                    n = db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
            except sqlite3.Error:
                pass
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    with Session.open("c", opts=OPTS) as s:
        assert len(s.docs) >= n >= 3
        rep = s.load(tree)
        assert rep.reused_blocks >= n - 2 and len({b.source for b in s.docs}) == 6


def test_damaged_shared_key_store_is_started_over(home):
    _loaded()
    keys = next((home / "data" / "blocks").rglob("keys.sqlite"))
    keys.write_bytes(b"not a database" * 100)
    for p in keys.parent.glob("keys.sqlite-*"):
        p.unlink()
    assert "KX-4471-QZ" in _ask().answer  # the attention keys are a cache: recomputed, never fatal


def test_rm_frees_a_models_blocks_and_prune_frees_unused_ones(home):
    _loaded("a")
    blocks = home / "data" / "blocks"
    assert list(blocks.rglob("*.lsb"))
    r = run_cli("sessions", home=home)
    assert r.returncode == 0
    from localsym.session import delete_session

    delete_session("a")
    r = run_cli("prune", home=home)
    assert r.returncode == 0 and "removed" in r.stdout, r.stderr
    assert not list(blocks.rglob("*.lsb"))
    _loaded("b")
    r = run_cli("rm", "smollm2-135m", home=home)
    assert r.returncode == 0 and "freed" in r.stdout, r.stderr
    assert not list(blocks.rglob("*.lsb"))
