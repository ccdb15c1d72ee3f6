"""A session's retrieval index is persisted (#18): opening reads nothing in proportion to
the session, a damaged or missing index is rebuilt from the exact tokens with one warning,
sessions from before the index still open, and an answer names its sources (#18). A full
disk never stops a session from being read (#17). Real SmolLM2, small documents."""

import json
import logging
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from filelock import FileLock

from localsym.memory.retrieval import StoredRetriever
from localsym.session import GenParams, RunOptions, Session, SessionConfig

FACT = "The deploy key for the staging server is KX-4471-QZ."
FILLER = "".join(f"Line {i}: the weekly report lists routine maintenance and nothing unusual.\n" for i in range(24))
DOC = f"Project notes.\n{FILLER[:900]}{FACT}\n{FILLER[900:]}"
QUESTION = "What is the deploy key for the staging server?"
FACT_LINE = next(i for i, line in enumerate(DOC.splitlines(), 1) if FACT in line)
OPTS = RunOptions(n_ctx=2048, vram="cpu")


def _cfg(**kw):
    return SessionConfig(**{"block_tokens": 64, **kw})


def _load(name="ix"):
    with Session.open(name, "smollm2-135m", OPTS, _cfg()) as s:
        s.ingest_text(DOC, "notes.txt", "file")
        return len(s.docs)


def _ask(name="ix"):
    with Session.open(name, opts=OPTS) as s:
        assert s._docs is None  # opening read no document block
        with s.ask(QUESTION, GenParams(max_tokens=24)) as turn:
            turn.text()
        sel = s.working.selector
        assert isinstance(sel, StoredRetriever)
        return turn.stats, sel.repaired


def test_open_reads_the_persisted_index_and_the_answer_names_its_sources(home):
    n = _load()
    stats, repaired = _ask()
    assert repaired == 0  # nothing recomputed: sketches and postings came from disk
    assert "KX-4471-QZ" in stats.answer
    src = stats.sources
    assert stats.blocks_total >= n and len(src) == stats.restored_blocks + stats.reinjected_blocks >= 1
    assert {s["path"] for s in src} == {"notes.txt"}
    assert all(s["how"] in ("restored", "reinjected") for s in src)
    assert sum(s["how"] == "reinjected" for s in src) == stats.reinjected_blocks
    assert sum(s["how"] == "restored" for s in src) == stats.restored_blocks
    n_lines = len(DOC.splitlines())
    assert all(1 <= s["lines"][0] <= s["lines"][1] <= n_lines for s in src)
    # the block holding the key is re-injected from its exact tokens and covers the key's line
    assert any(s["how"] == "reinjected" and s["lines"][0] <= FACT_LINE <= s["lines"][1] for s in src)
    assert max(s["score"] for s in src) > 0
    # every block of the file is named, in order, with its lines joined end to end
    with Session.open("ix", opts=OPTS) as s:
        spans = [b.lines for b in s.docs]
    assert spans[0][0] == 1 and spans[-1][1] == n_lines
    assert all(a[1] <= b[0] <= a[1] + 1 for a, b in zip(spans, spans[1:]))


@pytest.mark.parametrize("damage", ["row_bit", "header", "deleted"])
def test_a_damaged_or_missing_index_is_rebuilt_from_the_exact_tokens(home, damage, caplog):
    _load()
    sk = home / "data" / "sessions" / "ix" / "sketches.lsx"
    data = bytearray(sk.read_bytes())
    if damage == "row_bit":
        data[64 + 8192 + 100] ^= 0x08  # the second block's sketch row
        sk.write_bytes(bytes(data))
    elif damage == "header":
        data[9] ^= 0xFF  # the format version
        sk.write_bytes(bytes(data))
    else:
        sk.unlink()
    with caplog.at_level(logging.WARNING):
        stats, repaired = _ask()
    assert repaired == (1 if damage == "row_bit" else _n_docs(home))
    warned = [r.getMessage() for r in caplog.records if "retrieval index" in r.getMessage()]
    assert len(warned) == 1 and "rebuilt from their exact tokens" in warned[0]
    assert "KX-4471-QZ" in stats.answer
    stats, repaired = _ask()  # written back: the next open reads it clean
    assert repaired == 0 and "KX-4471-QZ" in stats.answer


def _n_docs(home):
    with sqlite3.connect(home / "data" / "sessions" / "ix" / "session.db") as db:
        q = "SELECT COUNT(*) FROM blocks b JOIN docs d ON d.id = b.doc_id WHERE d.kind != 'turn'"
        return db.execute(q).fetchone()[0]


def test_a_session_from_before_the_index_opens_and_is_indexed_once(home, caplog):
    _load()
    d = home / "data" / "sessions" / "ix"
    with sqlite3.connect(d / "session.db") as db:  # back to the v3 schema, as an older localsym wrote it
        db.executescript(
            "DROP TABLE postings; DROP TABLE token_df; "
            "ALTER TABLE blocks DROP COLUMN sketch_row; ALTER TABLE blocks DROP COLUMN sketch_crc; "
            "ALTER TABLE blocks DROP COLUMN indexed; ALTER TABLE blocks DROP COLUMN line0; "
            "ALTER TABLE blocks DROP COLUMN line1; ALTER TABLE blocks DROP COLUMN label; "
            "ALTER TABLE blocks DROP COLUMN page0; ALTER TABLE blocks DROP COLUMN page1; "
            "ALTER TABLE blocks DROP COLUMN lexed; DROP TABLE lexical; "
            "ALTER TABLE blocks DROP COLUMN sem; ALTER TABLE blocks DROP COLUMN sem_crc; PRAGMA user_version = 3;"
        )
    (d / "sketches.lsx").unlink()
    with caplog.at_level(logging.WARNING):
        stats, repaired = _ask()
    assert repaired == _n_docs(home) and "KX-4471-QZ" in stats.answer
    assert all(s["lines"] is None for s in stats.sources)  # old blocks have no line coordinates
    stats, repaired = _ask()
    assert repaired == 0 and "KX-4471-QZ" in stats.answer


def _sem_rows(home):
    with sqlite3.connect(home / "data" / "sessions" / "ix" / "session.db") as db:
        q = "SELECT b.id, b.sem, b.sem_crc FROM blocks b JOIN docs d ON d.id = b.doc_id WHERE d.kind != 'turn'"
        return db.execute(q).fetchall()


def test_semantic_vectors_are_written_on_load_and_a_damaged_or_missing_one_is_made_again(home):
    """Each document block's semantic vector is stored (f16, with its checksum) as it is
    loaded; one from before the column or one whose bytes rotted is made again from the
    block's exact tokens on the next question and written back, identical to the original."""
    _load()
    rows = _sem_rows(home)
    assert rows and all(v is not None and len(v) == 512 and c == zlib.crc32(v) for _, v, c in rows)
    original = {i: v for i, v, _ in rows}
    db_path = home / "data" / "sessions" / "ix" / "session.db"
    (first, v0, _), (second, *_) = rows[0], rows[1]
    with sqlite3.connect(db_path) as db:
        rotted = bytearray(v0)
        rotted[7] ^= 0x10
        db.execute("UPDATE blocks SET sem = ? WHERE id = ?", (bytes(rotted), first))
        db.execute("UPDATE blocks SET sem = NULL, sem_crc = NULL WHERE id = ?", (second,))
    stats, _ = _ask()
    assert "KX-4471-QZ" in stats.answer
    after = {i: (v, c) for i, v, c in _sem_rows(home)}
    assert all(c == zlib.crc32(v) for v, c in after.values())
    # made again from the same exact tokens: close to what loading wrote (detokenized text
    # there, the pieces joined here), and the undamaged ones untouched
    for i in (first, second):
        a = np.frombuffer(after[i][0], np.float16).astype(np.float32)
        b = np.frombuffer(original[i], np.float16).astype(np.float32)
        assert float(a @ b) > 0.98
    assert all(after[i][0] == original[i] for i in original if i not in (first, second))
    # a block whose tokens rotted too cannot be embedded again: no zero vector is stored for
    # it (that would pass its checksum and hide it from this signal for good)
    third = rows[2][0]
    with sqlite3.connect(db_path) as db:
        db.execute("UPDATE blocks SET sem = NULL, sem_crc = NULL, tokens_crc = tokens_crc + 1 WHERE id = ?", (third,))
    _ask()
    assert {i: v for i, v, _ in _sem_rows(home)}[third] is None


def test_replacing_a_file_drops_its_old_blocks_from_the_index(home, tmp_path, monkeypatch):
    # the document's label (its absolute path) is in its tokens, and pytest's numbered tmp
    # path there changed the greedy answer about one run in four: a fixed folder, one run at
    # a time; loaded by a relative name first and an absolute one after, as one document
    fixed = Path(tempfile.gettempdir()).resolve() / "localsym-test-notes"
    with FileLock(str(fixed) + ".lock"):
        fixed.mkdir(exist_ok=True)
        monkeypatch.chdir(fixed)
        f = fixed / "notes.txt"
        f.write_text(DOC)
        with Session.open("ix", "smollm2-135m", OPTS, _cfg()) as s:
            s.load("notes.txt")
            f.write_text(DOC.replace("KX-4471-QZ", "ZP-9001-MM"))
            s.load(str(f))
            assert {d.source for d in s.docs} == {str(f)}
            with s.ask(QUESTION, GenParams(max_tokens=24)) as turn:
                answer = turn.text()
            assert "ZP-9001-MM" in answer and "KX-4471-QZ" not in answer
    with sqlite3.connect(home / "data" / "sessions" / "ix" / "session.db") as db:
        old = db.execute("SELECT id FROM docs WHERE active = 0").fetchall()
        assert (
            old
            and not db.execute(
                "SELECT COUNT(*) FROM postings p JOIN blocks b ON b.id = p.block_id WHERE b.doc_id = ?", old[0]
            ).fetchone()[0]
        )
        assert not db.execute("SELECT COUNT(*) FROM token_df WHERE df < 0").fetchone()[0]


def _messages(home, name="ix"):
    db = sqlite3.connect(home / "data" / "sessions" / name / "session.db")
    try:
        db.execute("PRAGMA locking_mode=EXCLUSIVE")  # readable on a full disk too (no -shm file)
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
    finally:
        db.close()


ASK = ["ask", QUESTION, "--session", "ix", "-n", "24", "-c", "2048", "--vram", "cpu"]


def _one_line_error(r):
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_ask_when_block_files_can_no_longer_grow_is_one_line(home):
    """EFBIG (RLIMIT_FSIZE, no root needed): the answer is given, storing the exchange fails
    in one line, nothing half-stored; with room again the session goes on."""
    _load()
    env = dict(os.environ, LOCALSYM_HOME=str(home))

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    r = subprocess.run(
        [sys.executable, "-m", "localsym", *ASK],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=small_files,
    )
    line = _one_line_error(r)
    assert "cannot write" in line and "disk" in line
    assert "KX-4471-QZ" in r.stdout  # the answer was read from the session
    assert _messages(home) == 0 and not list(home.rglob("*.tmp"))
    r = run_cli(*ASK, "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert "KX-4471-QZ" in json.loads(r.stdout)["answer"] and _messages(home) == 2


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="a real full filesystem needs root")
def test_ask_on_a_really_full_disk_reads_the_session_and_says_so_in_one_line(home):
    """A tmpfs holding the sessions, filled to the last byte: opening and answering need
    no space (SQLite's WAL index lives in memory then); storing the turn is one line."""
    _load()
    sessions = home / "data" / "sessions"
    saved = home / "saved-sessions"
    shutil.move(sessions, saved)
    sessions.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(sessions)]).returncode:
        pytest.skip("mount refused")
    try:
        shutil.copytree(saved / "ix", sessions / "ix")
        fd = os.open(sessions / "fill", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass  # full to the last byte
        finally:
            os.close(fd)
        r = run_cli(*ASK, home=home)
        line = _one_line_error(r)
        assert "cannot write" in line and "disk is full" in line
        assert "KX-4471-QZ" in r.stdout
        assert _messages(home) == 0
        (sessions / "fill").unlink()
        r = run_cli(*ASK, "--json", home=home)
        assert r.returncode == 0, r.stderr
        assert "KX-4471-QZ" in json.loads(r.stdout)["answer"] and _messages(home) == 2
    finally:
        subprocess.run(["umount", "-l", str(sessions)])
