"""Sessions sharing one llama.cpp context (`serve --parallel`, runtime/context_pool.py): the
answers are the ones each session gives on a context of its own, whether the sessions take
turns in one slot (evicting each other) or run at once in two (their decoding steps batched
together); a cancel stops only its own session; closing a session gives its slot back.
Real SmolLM2."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from localsym.runtime.context_pool import ContextPool, ContextView
from localsym.session import GenParams, RunOptions, Session, SessionConfig

FACTS = {
    "a.txt": "The harbour master of Port Ellen is called Agnes Murdo. Her office opens at seven.\n",
    "b.txt": "The lighthouse keeper of Skerry Point is called Tomas Vell. He rings the bell at noon.\n",
}
QUESTIONS = [
    ("a", "Who is the harbour master of Port Ellen?"),
    ("b", "Who is the lighthouse keeper of Skerry Point?"),
    ("a", "When does her office open?"),
    ("b", "When does he ring the bell?"),
]
CFG = SessionConfig(block_tokens=64)


@pytest.fixture
def files(tmp_path: Path) -> Path:
    for name, text in FACTS.items():
        (tmp_path / name).write_text(text * 3, encoding="utf-8")
    return tmp_path


def _answers(parallel: int, files: Path, tag: str) -> tuple[list[str], int]:
    opts = RunOptions(n_ctx=1024, vram="cpu", parallel=parallel)
    with (
        Session.open(f"{tag}-a", "smollm2-135m", opts, CFG) as a,
        Session.open(f"{tag}-b", "smollm2-135m", opts, CFG) as b,
    ):
        a.load(files / "a.txt")
        b.load(files / "b.txt")
        out = []
        for who, q in QUESTIONS:
            with (a if who == "a" else b).ask(q, GenParams(max_tokens=16)) as t:
                out.append(t.text())
        pool = a.engine.ctx.pool if isinstance(a.engine.ctx, ContextView) else None
        if pool is not None:
            assert b.engine.ctx.pool is pool  # one context for both
            assert a.engine.ctx.n_ctx == 1024 and pool.ctx.n_ctx == 1024 * parallel
        return out, pool.evictions if pool is not None else 0


def test_sessions_taking_turns_in_one_slot_answer_as_on_their_own_contexts(home, files):
    own, _ = _answers(0, files, "own")
    assert "Agnes Murdo" in own[0] and "Tomas Vell" in own[1]
    shared, evictions = _answers(1, files, "one")
    assert shared == own
    assert evictions >= 4  # every switch gave the slot to the other session, which rebuilt its set


def test_two_slots_answer_at_once_and_a_cancel_stops_only_its_own_session(home, files):
    opts = RunOptions(n_ctx=1024, vram="cpu", parallel=2)
    with (
        Session.open("two-a", "smollm2-135m", opts, CFG) as a,
        Session.open("two-b", "smollm2-135m", opts, CFG) as b,
    ):
        a.load(files / "a.txt")
        b.load(files / "b.txt")
        # what each answers alone first, then both at once from two threads
        alone = {}
        for s, (who, q) in zip((a, b), QUESTIONS[:2]):
            with s.ask(q, GenParams(max_tokens=24)) as t:
                alone[who] = t.text()
        together: dict[str, str] = {}
        stopped: dict[str, str] = {}

        def ask(s: Session, who: str, q: str) -> None:
            with s.ask(q, GenParams(max_tokens=24)) as t:
                together[who] = t.text()

        def ask_and_cancel(s: Session, q: str) -> None:
            with s.ask(q, GenParams(max_tokens=200)) as t:
                for i, _piece in enumerate(t):
                    if i == 2:
                        s.cancel()  # this session's turn only
                stopped["reason"] = t.stats.stop_reason or ""

        threads = [threading.Thread(target=ask, args=(s, who, q)) for s, (who, q) in zip((a, b), QUESTIONS[:2])]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert together == alone  # decoded in shared batches, the same greedy answers
        pool = a.engine.ctx.pool
        assert pool.evictions == 0  # two slots: nobody was evicted
        assert pool.batched_rows > pool.batches  # some steps of the two answers went in one batch

        # b answers in full while a is cancelled mid-answer in another thread
        tc = threading.Thread(target=ask_and_cancel, args=(a, "Tell me everything about Port Ellen."))
        tb = threading.Thread(target=ask, args=(b, "b", QUESTIONS[1][1]))
        tc.start()
        tb.start()
        tc.join()
        tb.join()
        assert stopped["reason"] == "cancelled"
        assert together["b"] == alone["b"]


def test_closing_a_session_gives_its_slot_back_and_the_last_frees_the_context(home, files):
    opts = RunOptions(n_ctx=512, vram="cpu", parallel=1)
    a = Session.open("slot-a", "smollm2-135m", opts, CFG)
    pool = a.engine.ctx.pool
    assert isinstance(pool, ContextPool) and pool.resident[0] is a.engine.ctx
    b = Session.open("slot-b", "smollm2-135m", opts, CFG)  # its sink evicts a
    assert pool.resident[0] is b.engine.ctx and pool.evictions == 1
    b.close()
    assert pool.resident == [None] and pool.users == 1 and pool.ctx._ptr
    with a.ask("Say hello.", GenParams(max_tokens=4)) as t:  # a comes back into the free slot
        assert t.text()
    a.close()
    assert pool.users == 0 and pool.ctx._ptr is None
