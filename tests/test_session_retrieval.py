"""Retrieval through a real session on SmolLM2: exact keys bring their blocks and leave the
same-shaped lookalikes out, hops follow a chain, and the working set is chosen again while
the answer is decoded (a key the answer names brings its block in)."""

from __future__ import annotations

import json

from conftest import run_cli

from localsym.bench.corpus import stdlib_text
from localsym.bench.ruler import NIAH_INTRO, NIAH_NEEDLE, NIAH_QUESTION, VT_INTRO, VT_QUESTION
from localsym.runtime.engine import GenParams, RunOptions
from localsym.session import Session, SessionConfig, _session

LINES = stdlib_text(200_000).splitlines(keepends=True)


def _pages(n: int, lines: int = 30) -> list[str]:
    return ["".join(LINES[i * lines : (i + 1) * lines]) for i in range(n)]


def _open(name: str, **kw) -> Session:
    cfg = SessionConfig(**{"block_tokens": 64, "working_set_tokens": 384, "system": "", **kw})
    return Session.open(name, "smollm2-135m", RunOptions(n_ctx=2048, vram="cpu"), cfg)


def _ingest(s: Session, intro: str, notes: list[tuple[int, str]], pages: list[str]) -> None:
    s.ingest_text(intro, "task.txt", "file")
    for i, page in enumerate(pages):
        for k, (at, text) in enumerate(notes):
            if at == i:
                s.ingest_text(text, f"note-{k:02d}.txt", "file")
        s.ingest_text(page, f"stdlib-{i:04d}.py", "file")


def test_multikey_question_gets_its_key_not_the_lookalikes(home):
    pairs = [
        ("damp-ribbon", "3254257"),
        ("damp-violin", "2058756"),
        ("glossy-ribbon", "5279348"),
        ("narrow-orchard", "2978347"),
    ]
    notes = [(at, NIAH_NEEDLE.format(key=k, value=v)) for at, (k, v) in zip((1, 3, 5, 7), pairs)]
    with _open("mk") as s:
        _ingest(s, NIAH_INTRO, notes, _pages(8))
        assert s.total_tokens > 4 * 384  # the working set holds a fraction of it
        turn = s.ask(NIAH_QUESTION.format(query="damp-ribbon"), GenParams(max_tokens=48))
        answer = turn.text()
    paths = {x["path"]: x["how"] for x in turn.stats.sources}
    assert paths.get("note-00.txt") == "reinjected"
    assert not {"note-01.txt", "note-02.txt", "note-03.txt"} & set(paths)
    assert "3254257" in answer
    assert not {"2058756", "5279348", "2978347"} & set(answer.split())


def test_vt_chain_comes_in_whole(home):
    names = ["ESZYC", "IDPYO", "PUMZG", "DPAMN", "TYYAW"]
    chain = ["VAR ESZYC = 68377"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, 5)]
    with _open("vt") as s:
        _ingest(s, VT_INTRO, list(zip((0, 2, 3, 5, 7), chain)), _pages(8))
        turn = s.ask(VT_QUESTION.format(value="68377"), GenParams(max_tokens=24))
        turn.text()
    paths = {x["path"] for x in turn.stats.sources if x["how"] == "reinjected"}
    assert {f"note-{k:02d}.txt" for k in range(5)} <= paths


NOTES = [
    (1, "Billing is done by the service named ZORBLAX_7."),
    (6, "ZORBLAX_7 is reachable at 10.0.0.7:48213."),
]
QUESTION = "What is the name of the billing service? And how is it reached?"


def test_the_answer_naming_a_key_brings_its_block_in(home, monkeypatch):
    with _open("refresh") as s:
        _ingest(s, "Notes about our services.", NOTES, _pages(8))
        turn = s.ask(QUESTION, GenParams(max_tokens=48))
        answer = turn.text()
        st = turn.stats
        held = {x["path"] for x in st.sources}
        assert len(st.refreshes) >= 1 and st.refresh_checks >= len(st.refreshes)
        r = st.refreshes[0]
        assert "ZORBLAX_7" in r["words"] and r["reason"] in ("word", "newline")
        assert {b["path"] for b in r["blocks"]} >= {"note-01.txt"} and r["blocks"][0]["how"] == "reinjected"
        assert "note-01.txt" in held  # the sources list what came in during the answer too
        listed = [(x["path"], tuple(x["lines"] or ())) for x in st.sources]
        assert len(listed) == len(set(listed))  # each block once, however often it came and went
        assert "ZORBLAX_7" in answer
        # the turn is whole: the next question sees the exchange, and the KV matches the tokens
        assert s.messages()[-1]["content"] == answer
        assert s.engine.ctx.seq_pos_max(0) + 1 == s.working.hot.end
        # without refresh the same question stays with what the question found
        s2 = s.ask(QUESTION, GenParams(max_tokens=48), refresh=False)
        s2.text()
        assert s2.stats.refreshes == [] and s2.stats.refresh_checks == 0
        # the bound: no refresh beyond REFRESH_MAX an answer
        monkeypatch.setattr(_session, "REFRESH_MAX", 0)
        s3 = s.ask(QUESTION, GenParams(max_tokens=48))
        s3.text()
        assert s3.stats.refreshes == [] and s3.stats.refresh_checks == 0
    # ask --json reports them
    out = run_cli("ask", "--session", "refresh", QUESTION, "-n", "48", "--json", home=home)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert "refreshes" in d and isinstance(d["refreshes"], list)
