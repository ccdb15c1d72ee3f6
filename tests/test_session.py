"""Sessions with tiered memory, against the real SmolLM2: facts survive eviction, restarts,
damaged files and kill -9; unchanged files are never computed twice."""

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import run_cli

from localsym.errors import BudgetError
from localsym.runtime.engine import GenParams, RunOptions
from localsym.session import Session, SessionConfig

FACT = "The deploy key for the staging server is KX-4471-QZ."
FILLER = "".join(f"Line {i}: the weekly report lists routine maintenance and nothing unusual.\n" for i in range(24))
DOC = f"Project notes.\n{FILLER[:900]}{FACT}\n{FILLER[900:]}"
QUESTION = "What is the deploy key for the staging server?"


def _opts():
    return RunOptions(n_ctx=2048, vram="cpu")


def _cfg(**kw):
    return SessionConfig(**{"block_tokens": 64, **kw})


def _held_blocks(s):
    """The document blocks the last turn's working set held, in the hot context's order."""
    by_key = {b.key: b for b in s.docs}
    return [by_key[g.key] for g in s.working.hot.segments if g.key in by_key]


def _never_left(s, held, question, max_tokens):
    """The reference answer: the same blocks decoded straight into the context, one decode
    call each (llama.cpp's quantized CPU kernels give batch-size-dependent results), nothing
    ever saved out, quantized or restored."""
    eng, fr = s.engine, s.frame
    eng.ctx.clear()
    pos = 0
    for piece in [fr.sink] + [b.tokens.tolist() for b in held] + [fr.close]:
        eng.ctx.decode(piece, pos, 0, logits="none")
        pos += len(piece)
    q = fr.user_prefix + eng.model.tokenize(question) + fr.user_suffix
    reference = "".join(eng.generate(q, pos, GenParams(max_tokens=max_tokens)))
    s.working.hot.segments.clear()
    return reference


def test_fact_restored_from_disk_answers_like_it_never_left(home):
    # warm tier of zero bytes: every block comes back from the cold files on disk
    with Session.open("evicted", "smollm2-135m", _opts(), _cfg(warm_mb=0)) as s:
        s.ingest_text(DOC, "notes.txt", "file")
        assert len(s.store.warm) == 0 and s.store.cold.used > 0
        turn = s.ask(QUESTION, GenParams(max_tokens=32))
        answer = turn.text()
        # the working set came back: from disk, or (the one holding the key) re-prefilled verbatim
        held = _held_blocks(s)
        assert turn.stats.restored_blocks + turn.stats.reinjected_blocks == len(held) >= 2
        assert turn.stats.reinjected_blocks == 2  # the block holding the key, and the one after it
        reference = _never_left(s, held, QUESTION, 32)
    assert "KX-4471-QZ" in reference
    assert answer == reference


def test_resume_after_restart_without_reingesting(home):
    with Session.open("resume", "smollm2-135m", _opts(), _cfg()) as s:
        s.ingest_text(DOC, "notes.txt", "file")
        n_blocks = len(s.docs)
    with Session.open("resume", opts=_opts()) as s:  # model and config come from the session
        assert len(s.docs) == n_blocks and s.config.block_tokens == 64
        turn = s.ask(QUESTION, GenParams(max_tokens=32))
        assert "KX-4471-QZ" in turn.text()
        assert turn.stats.recomputed_blocks == 0
        # the filler's own words: its blocks come back from the block files, none recomputed
        turn = s.ask("What does the weekly report list?", GenParams(max_tokens=8))
        turn.text()
        assert turn.stats.restored_blocks > 0 and turn.stats.recomputed_blocks == 0
    with Session.open("resume", opts=_opts()) as s:
        assert [m["role"] for m in s.messages()] == ["user", "assistant"] * 2
        assert len(s.turns) >= 1


def test_blocks_holding_keys_are_pinned_at_q8_and_the_mix_is_reported(home):
    with Session.open("pinned", "smollm2-135m", _opts(), _cfg()) as s:
        s.ingest_text(DOC, "notes.txt", "file")
        text = [s.engine.model.detokenize(b.tokens.tolist()) for b in s.docs]
        metas = [s.store.cold.meta(b.key) for b in s.docs]
        for t, meta in zip(text, metas):
            formats = {k.split(":")[1] for k in meta["mix"]}
            if "4471" in t:  # the key's block: never below q8, in either tier
                assert meta["pinned"] and formats <= {"q8", "f16"}
            else:
                assert not meta["pinned"]
        assert any(m["pinned"] for m in metas) and not all(m["pinned"] for m in metas)
        mix = s.quant_mix()
        n_layers = s.engine.info.n_layer
        assert sum(n for k, n in mix["cold"].items() if k.startswith("K:")) == len(s.docs) * n_layers
        assert mix["pinned_blocks"] == sum(m["pinned"] for m in metas)
        # one encoding serves both tiers: a block restores the same from RAM or disk
        assert set(mix["warm"]) <= set(mix["cold"]) and mix["warm"]


def test_bit_flipped_block_is_caught_and_rebuilt(home):
    with Session.open("flip", "smollm2-135m", _opts(), _cfg(warm_mb=0)) as s:
        s.ingest_text(DOC, "notes.txt", "file")
        # blocks that are restored from disk (the key's block is re-prefilled, not read)
        victims = [b for b in s.docs if "KX" not in s.engine.model.detokenize(b.tokens.tolist())]
        paths = [s.store.cold.path(b.key) for b in victims]
    for path in paths:
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x40
        path.write_bytes(bytes(data))
    # the second question does not read the first exchange: SmolLM2 repeats a right answer
    # about the filler ("The weekly report lists routine maintenance") to the next question
    with Session.open("flip", opts=_opts(), overrides={"recent_tokens": 0}) as s:
        turn = s.ask("What does the weekly report list?", GenParams(max_tokens=8))  # the filler's words
        turn.text()
        assert turn.stats.recomputed_blocks >= 1 and len(turn.stats.warnings) == turn.stats.recomputed_blocks
        turn = s.ask(QUESTION, GenParams(max_tokens=32))
        assert "KX-4471-QZ" in turn.text()
        for b in victims:
            if any(src["lines"] == list(b.lines) for src in turn.stats.sources):
                s.store.cold.get(b.key)  # a rebuilt file reads back clean


def test_reload_reuses_blocks_and_an_edit_recomputes_only_that_file(home, tmp_path):
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True)
    for i in range(3):
        (tree / "pkg" / f"mod{i}.py").write_text("".join(f"def f{i}_{j}(x):\n    return x * {j}\n" for j in range(30)))
    with Session.open("code", "smollm2-135m", _opts(), _cfg()) as s:
        first = s.load(tree)
        assert first.files == 3 and first.computed_blocks == first.blocks > 3
    with Session.open("code2", "smollm2-135m", _opts(), _cfg()) as s:  # another session, same model
        again = s.load(tree)
        assert again.computed_blocks == 0 and again.reused_blocks == first.blocks
        assert again.seconds * 50 < first.seconds
        edited = tree / "pkg" / "mod1.py"
        edited.write_text(edited.read_text().replace("return x * 29", "return x * 2900"))
        third = s.load(tree)
        assert third.files == 3
        assert 1 <= third.computed_blocks < first.blocks / 3 + 1  # only the tail of mod1.py
        assert third.tokens < first.tokens / 2  # the unchanged files were not even re-read into blocks
        assert {b.source for b in s.docs} == {str(p) for p in sorted((tree / "pkg").glob("*.py"))}


def test_walker_skips_what_a_user_expects(home, tmp_path):
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / ".gitignore").write_text("*.log\nbuild/\n")
    (tree / "a.py").write_text("print('a')\n")
    (tree / "x.log").write_text("noise\n")
    (tree / "build").mkdir()
    (tree / "build" / "out.py").write_text("print('built')\n")
    (tree / "img.bin").write_bytes(bytes(range(256)) * 4)
    (tree / "big.txt").write_text("x" * (2 << 20))
    outside = tmp_path / "secret.txt"
    outside.write_text("do not read\n")
    (tree / "link.txt").symlink_to(outside)
    from localsym.ingest import walk

    found = walk(tree)
    assert [p.name for p in found.files] == ["a.py"]
    reasons = {p.name: why for p, why in found.skipped}
    assert reasons["img.bin"] == "binary"
    assert reasons["big.txt"].startswith("too big")
    assert reasons["link.txt"] == "symlink out of the tree"


def test_cold_tier_keeps_its_budget_and_evicted_blocks_come_back(home):
    with Session.open("tiny", "smollm2-135m", _opts(), _cfg(cold_gb=1.2e-3, warm_mb=0)) as s:  # ~3 blocks
        s.ingest_text(DOC * 3, "big.txt", "file")
        cold = s.store.cold
        assert cold.evictions > 0 and cold.used <= cold.budget
        assert sum(cold.has(b.key) for b in s.docs) < len(s.docs)
        turn = s.ask(QUESTION, GenParams(max_tokens=24))
        assert "KX-4471-QZ" in turn.text() and turn.stats.recomputed_blocks > 0
    with pytest.raises(BudgetError, match="more than the whole cold budget"):
        with Session.open("tinier", "smollm2-135m", _opts(), _cfg(cold_gb=1e-6)) as s:
            s.ingest_text(DOC, "small.txt", "file")


def test_cli_load_and_ask(home, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text(DOC)
    r = run_cli("load", str(f), "--session", "cli", "-c", "2048", "--block-tokens", "64", "--vram", "cpu", home=home)
    assert r.returncode == 0, r.stderr
    assert "loaded 1 files" in r.stdout
    r = run_cli("ask", QUESTION, "--session", "cli", "--json", "-n", "32", "-c", "2048", "--vram", "cpu", home=home)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout)
    # "sources" (the blocks that served the answer) appears once the CLI prints it
    for src in out.get("sources", []):
        assert src["path"].endswith("notes.txt") and src["how"] in ("restored", "reinjected")
    assert isinstance(out["refreshes"], list)  # the working set chosen again while answering
    assert set(out) - {"sources", "refreshes"} == {
        "answer",
        "total_tokens",
        "hot_tokens",
        "blocks_total",
        "blocks_in_working_set",
        "restored_blocks",
        "recomputed_blocks",
        "reinjected_blocks",
        "ttft_s",
        "warnings",
    }
    assert "KX-4471-QZ" in out["answer"] and out["warnings"] == []
    assert out["restored_blocks"] + out["reinjected_blocks"] == out["blocks_in_working_set"] >= 1
    r = run_cli("load", str(tmp_path / "missing"), "--session", "cli", home=home)
    assert r.returncode == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr


def test_kill_9_during_load_keeps_what_was_acknowledged(home, tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(4):
        (tree / f"m{i}.py").write_text("".join(f"value_{i}_{j} = {j * 7}\n" for j in range(30)))
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localsym",
            "load",
            str(tree),
            "--session",
            "k9",
            "-q",
            "-c",
            "2048",
            "--block-tokens",
            "64",
            "--vram",
            "cpu",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    db_path = home / "data" / "sessions" / "k9" / "session.db"
    acknowledged = 0
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                with sqlite3.connect(db_path) as db:
                    acknowledged = db.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
            except sqlite3.Error:
                pass
        if acknowledged >= 4:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert acknowledged >= 4
    with Session.open("k9", opts=_opts()) as s:
        assert len(s.docs) >= acknowledged
        for b in s.docs:
            s.store.cold.get(b.key)  # every acknowledged block is on disk and passes its checksum
        rep = s.load(tree)
        # nothing acknowledged is computed again: a finished file is skipped, a half-ingested
        # one restarts and reuses its blocks (one may have been sealed but not yet indexed)
        assert rep.computed_blocks <= len(s.docs) - (acknowledged - 1)
        assert len({b.source for b in s.docs}) == 4


def test_config_file_sets_budgets_and_bad_keys_are_clear(home):
    from localsym.errors import LocalsymError

    cfg_dir = home / "config"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    (cfg_dir / "config.toml").write_text("[memory]\nwarm_mb = 3\ncold_gb = 0.5\n")
    with Session.open("cfg", "smollm2-135m", _opts()) as s:
        assert s.store.warm.budget == 3 * 2**20 and s.store.cold.budget == int(0.5 * 2**30)
    (cfg_dir / "config.toml").write_text("[memory]\nwarm_mb = 4\n")
    with Session.open("cfg", "smollm2-135m", _opts()) as s:
        assert s.store.warm.budget == 4 * 2**20  # the file still reaches a session that exists
    with Session.open("cfg", "smollm2-135m", _opts(), overrides={"warm_mb": 5}) as s:
        assert s.store.warm.budget == 5 * 2**20  # a flag beats the file
    (cfg_dir / "config.toml").write_text("[memory]\nwarm_gb = 3\n")
    with pytest.raises(LocalsymError, match="unknown key 'warm_gb'"):
        Session.open("cfg", "smollm2-135m", _opts())


def test_sliding_window_model_restores_like_it_never_left(home, gemma_path):
    """Gemma 3 (iSWA: a full and a sliding-window cache, two sub-blobs per block): blocks
    restored from disk give the same greedy continuation as the same decode calls with
    nothing ever leaving the context. (The reference keeps the decode calls' boundaries:
    llama.cpp's Q4_K CPU kernels give batch-size-dependent results, by up to 27 in K.)"""
    from conftest import GEMMA, register_cached

    register_cached(GEMMA)
    question = "What is the deploy key for the staging server?"
    # f16 blocks: the mechanism (two caches, sub-blobs, positions) is what is compared here,
    # exactly; quantized blocks move a greedy near-tie now and then (a q8 answer worded itself
    # differently after 0.01% of its codes moved by one step), so they are checked below
    with Session.open("gemma", GEMMA, _opts(), _cfg(warm_mb=0, kv_format="f16")) as s:
        assert s.n_caches == 2
        s.ingest_text(DOC, "notes.txt", "file")
        turn = s.ask(question, GenParams(max_tokens=24))
        answer = turn.text()
        held = _held_blocks(s)
        assert turn.stats.restored_blocks + turn.stats.reinjected_blocks == len(held) >= 2
        reference = _never_left(s, held, question, 24)
    assert "KX-4471-QZ" in reference
    assert answer == reference
    for fmt in ("q8", "adaptive"):
        with Session.open(f"gemma-{fmt}", GEMMA, _opts(), _cfg(warm_mb=0, kv_format=fmt)) as s:
            s.ingest_text(DOC, "notes.txt", "file")
            assert "KX-4471-QZ" in s.ask(question, GenParams(max_tokens=24)).text(), fmt


def test_a_turn_stopped_early_still_leaves_a_whole_session(home):
    """A caller that stops reading (a disconnecting HTTP client) closes the turn: the KV is
    made whole, the partial exchange stored, and the next question works."""
    opts = _opts()
    before = dict(opts.__dict__)
    with Session.open("early", "smollm2-135m", opts, _cfg()) as s:
        assert opts.__dict__ == before  # open does not touch the caller's options
        s.ingest_text(DOC, "notes.txt", "file")
        turn = s.ask("Write a long story about the sea.", GenParams(max_tokens=200))
        pieces = []
        for piece in turn:
            pieces.append(piece)
            if len(pieces) == 3:
                break
        turn.close()
        assert turn.stats.stop_reason == "closed" and turn.stats.completion_tokens >= 3
        hot = s.working.hot
        assert s.engine.ctx.seq_pos_max(0) + 1 == hot.end  # nothing past the stored turn
        assert [m["role"] for m in s.messages()] == ["user", "assistant"]
        assert s.messages()[1]["content"] == "".join(pieces)
        turn = s.ask(QUESTION, GenParams(max_tokens=32))
        assert "KX-4471-QZ" in turn.text()
