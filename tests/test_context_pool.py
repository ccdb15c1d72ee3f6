"""Sessions sharing one llama.cpp context (`serve --parallel`, runtime/context_pool.py): the
answers are the ones each session gives on a context of its own, whether the sessions take
turns in one slot (evicting each other) or run at once in two (their decoding steps batched
together); a cancel stops only its own session; closing a session gives its slot back.
Then what a hostile caller does: engines generating on one slot from two threads, or from
one thread at once (an error, not a hang), a grammar that fails in a shared batch, a decode
loop left open, a view closed while another thread decodes in it, a stray cancel on an
evicted session; and Gemma 3 (two KV caches, sliding window) in the shared context.
Real SmolLM2 and Gemma 3 270M."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from conftest import GEMMA, register_cached

from localsym.errors import LocalsymError
from localsym.runtime import context_pool
from localsym.runtime.context_pool import ContextPool, ContextView
from localsym.runtime.engine import Engine, GenStats
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
T = TypeVar("T")


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
    assert a.status().hot_tokens > 0
    b = Session.open("slot-b", "smollm2-135m", opts, CFG)  # its sink evicts a
    assert pool.resident[0] is b.engine.ctx and pool.evictions == 1
    assert a.status().hot_tokens == 0 < b.status().hot_tokens  # a holds nothing in the context now
    b.close()
    assert pool.resident == [None] and pool.users == 1 and pool.ctx._ptr
    with a.ask("Say hello.", GenParams(max_tokens=4)) as t:  # a comes back into the free slot
        assert t.text()
    a.close()
    assert pool.users == 0 and pool.ctx._ptr is None


# -- engines on the shared context, used as a careless caller would -----------------------------
ASK = {1: "Count from one to ten.", 2: "Name three colours."}


def _engines(path: Path, parallel: int) -> tuple[Engine, Engine]:
    opts = RunOptions(n_ctx=512, vram="cpu", parallel=parallel, n_seq_max=3)
    e1, e2 = Engine(path, opts), Engine(path, opts)
    assert isinstance(e1.ctx, ContextView) and isinstance(e2.ctx, ContextView) and e1.ctx.pool is e2.ctx.pool
    return e1, e2


def _prompt(e: Engine, n: int) -> list[int]:
    return e.chat_tokens([{"role": "user", "content": ASK[n]}])


def _say(e: Engine, n: int, tokens: int = 12, **kw) -> str:
    e.ctx.seq_rm(0)  # the last answer's cells: each answer starts at position 0
    return "".join(e.generate(_prompt(e, n), 0, GenParams(max_tokens=tokens, **kw)))


def _both_at_once(e1: Engine, e2: Engine) -> dict[int, str]:
    """Each engine's answer (``_say``), the two asked from two threads at once."""
    got: dict[int, str] = {}
    threads = [threading.Thread(target=lambda e=e, n=n: got.__setitem__(n, _say(e, n))) for e, n in ((e1, 1), (e2, 2))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return got


def test_engines_on_one_slot_keep_their_room_from_prompt_to_last_token(smol_path):
    """Engine.generate holds its view: another engine's steps wait for the slot instead of
    evicting it between two steps (which left each answer decoding into an empty sequence:
    garbage, with no error). In one thread the second generation, which could only wait for
    the first, is an error rather than a hang."""
    e1, e2 = _engines(smol_path, 1)
    try:
        alone = {1: _say(e1, 1), 2: _say(e2, 2)}
        assert alone[1] and alone[2]
        got = _both_at_once(e1, e2)
        assert got == alone
        e1.ctx.seq_rm(0)
        g1 = e1.generate(_prompt(e1, 1), 0, GenParams(max_tokens=12))
        assert next(g1)  # holds the only slot, suspended
        with pytest.raises(LocalsymError, match="held by this thread"):
            next(e2.generate(_prompt(e2, 2), 0, GenParams(max_tokens=12)))
        g1.close()  # gives the slot back
        assert _say(e2, 2) == alone[2]
    finally:
        e1.close()
        e2.close()


def test_a_grammar_that_fails_in_a_shared_batch_stops_only_its_answer(smol_path):
    """Two answers decode in shared batches; one's grammar allows no token after its first
    word (a NUL it cannot spell): that answer raises, the other's rows go on to the same
    greedy answer, and no decode loop is left counted."""
    e1, e2 = _engines(smol_path, 2)
    pool = e1.ctx.pool
    try:
        alone = _say(e1, 1, 16)
        out: dict[str, object] = {}

        def good() -> None:
            out["good"] = _say(e1, 1, 16)

        def bad() -> None:
            try:
                _say(e2, 2, 16, grammar='root ::= "Red" [\\x00]')
            except LocalsymError as e:
                out["bad"] = e

        threads = [threading.Thread(target=good), threading.Thread(target=bad)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert out["good"] == alone
        assert "allows no token" in str(out["bad"])
        assert pool.decoding == 0 and not pool._steps
        assert _say(e2, 2) and pool.decoding == 0  # the failed engine answers again
    finally:
        e1.close()
        e2.close()


def test_a_decode_loop_left_open_does_not_hold_up_the_others(smol_path, monkeypatch):
    """A batch waits (GATHER_S) for the steps of the sessions in a decode loop; one whose loop
    is suspended (its caller busy, or a generator nobody closed) is waited for once, not at
    every step of the others (with a 1 s wait, 8 steps took 8 s)."""
    monkeypatch.setattr(context_pool, "GATHER_S", 1.0)
    e1, e2 = _engines(smol_path, 2)
    pool = e1.ctx.pool
    try:
        e1.ctx.seq_rm(0)
        g1 = e1.generate(_prompt(e1, 1), 0, GenParams(max_tokens=50))
        assert next(g1)
        e2.ctx.seq_rm(0)
        g2 = e2.generate(_prompt(e2, 2), 0, GenParams(max_tokens=9))
        assert next(g2) and pool.decoding == 2
        t0 = time.monotonic()
        rest = list(g2)  # 8 steps, each alone in its batch
        assert len(rest) >= 4 and time.monotonic() - t0 < 5.0
        g1.close()
        assert pool.decoding == 0
    finally:
        e1.close()
        e2.close()


def test_closing_a_view_while_another_thread_decodes_in_it(smol_path):
    """The owner's answer stops (closing cancels it; a call after the close raises): no
    crash, no decode into the slot another session gets next; the closer does not wait for
    it; the slot serves the next session, whose answer is the greedy one."""
    e1, e2 = _engines(smol_path, 1)
    pool = e1.ctx.pool
    stats = GenStats()
    ended: list[BaseException | None] = []
    started = threading.Event()

    def long_answer() -> None:
        try:
            e1.ctx.seq_rm(0)
            for _ in e1.generate(_prompt(e1, 1), 0, GenParams(max_tokens=200), stats=stats):
                started.set()
            ended.append(None)
        except LocalsymError as e:
            ended.append(e)
        finally:
            started.set()

    try:
        alone = _say(e2, 2)
        th = threading.Thread(target=long_answer)
        th.start()
        assert started.wait(120)
        e1.close()
        th.join(60)
        assert not th.is_alive() and ended
        assert ended[0] is not None or stats.stop_reason == "cancelled"
        assert stats.completion_tokens < 200
        assert pool.users == 1 and pool.ctx._ptr
        assert _say(e2, 2) == alone
    finally:
        e1.close()
        e2.close()
    assert pool.users == 0 and pool.ctx._ptr is None


def test_a_stray_cancel_does_not_break_a_session_that_was_evicted(home):
    """A cancel that comes after its answer ended (Session.cancel from another thread) was
    left set; the session's next request, coming back after an eviction, rebuilt its sink
    under that cancel: the request failed, and every later one too (or, once the flag was
    gone, answered on a working set with no sink)."""
    opts = RunOptions(n_ctx=512, vram="cpu", parallel=1)
    with (
        Session.open("stray-a", "smollm2-135m", opts, CFG) as a,
        Session.open("stray-b", "smollm2-135m", opts, CFG) as b,
    ):
        with a.ask("Say hello.", GenParams(max_tokens=4)) as t:
            assert t.text()
        a.cancel()
        with b.ask("Say hello.", GenParams(max_tokens=4)) as t:  # evicts a
            assert t.text()
        assert a.engine.ctx.evicted
        with a.ask("Say hello again.", GenParams(max_tokens=4)) as t:
            assert t.text() and t.stats.stop_reason != "cancelled"
        assert a.working.hot.segments[0].key == "sink" and a.working.hot.segments[0].start == 0


def test_gemma3_sessions_share_the_context_as_on_their_own(home, files, gemma_path):
    """Gemma 3 keeps two KV caches (global and sliding-window): evicting a session removes
    its cells from both and its blocks come back as state blobs (one slot); the second
    slot's sequences (3-5) take restored blocks too (two slots); two sessions' steps share
    batches; the answers are those of contexts of their own."""
    register_cached(GEMMA)

    def run(parallel: int, tag: str) -> list[str]:
        opts = RunOptions(n_ctx=512, vram="cpu", parallel=parallel)
        with (
            Session.open(f"g{tag}-a", GEMMA, opts, CFG) as a,
            Session.open(f"g{tag}-b", GEMMA, opts, CFG) as b,
        ):
            a.load(files / "a.txt")
            b.load(files / "b.txt")
            out = []
            for who, q in QUESTIONS[:3]:  # a, b, a: with one slot, a comes back after an eviction
                with (a if who == "a" else b).ask(q, GenParams(max_tokens=10)) as t:
                    out.append(t.text())
            if parallel:
                pool = a.engine.ctx.pool
                assert pool.evictions >= 2 if parallel == 1 else pool.evictions == 0
            return out

    own = run(0, "own")
    assert "Agnes" in own[0]
    assert run(1, "one") == own
    assert run(2, "two") == own
    # two engines' answers at once, their steps in shared batches (rows masked by sequence)
    e1, e2 = _engines(gemma_path, 2)
    try:
        alone = {1: _say(e1, 1), 2: _say(e2, 2)}
        got = _both_at_once(e1, e2)
        assert got == alone and e1.ctx.pool.batched_rows > e1.ctx.pool.batches
    finally:
        e1.close()
        e2.close()


def test_the_fit_plan_budgets_the_shared_context_once(home):
    """The first engine plans the whole shared context (--parallel x -c cells); the next ones
    on it plan nothing new (their plan's bytes are all shared), so a session more never
    changes the cache types or asks for VRAM it will not use."""
    opts = RunOptions(n_ctx=512, vram="cpu", parallel=2)
    with (
        Session.open("plan-a", "smollm2-135m", opts, CFG) as a,
        Session.open("plan-b", "smollm2-135m", opts, CFG) as b,
    ):
        pa, pb = a.engine.plan, b.engine.plan
        assert pa.n_ctx == 1024 and a.engine.ctx.n_ctx == b.engine.ctx.n_ctx == 512
        assert a.engine.ctx.pool is b.engine.ctx.pool and a.engine.ctx.pool.ctx.n_ctx == 1024
        assert pa.parts and all(not k.startswith("shared_") or k == "shared_weights" for k in pa.parts)
        assert all(k.startswith("shared_") for k in pb.parts) and pb.gpu_bytes == 0
        assert (pb.type_k, pb.type_v, pb.n_gpu_layers) == (pa.type_k, pa.type_v, pa.n_gpu_layers)
    # beyond the model's own context in all (-c 8192 x 2 on an 8K model): still one pool
    big = RunOptions(n_ctx=8192, vram="cpu", parallel=2)
    with Session.open("plan-c", "smollm2-135m", big, CFG) as c:
        assert c.engine.ctx.n_ctx == 8192 and c.engine.ctx.pool.ctx.n_ctx == 16384
        with c.ask("Say hello.", GenParams(max_tokens=4)) as t:
            assert t.text()


def test_an_auto_window_is_planned_for_every_session_of_the_shared_context(smol_path):
    """No -c with --parallel 2: the plan holds both sessions' windows (it planned one while
    the pool allocated two, twice the KV the plan budgeted)."""
    e = Engine(smol_path, RunOptions(vram="cpu", parallel=2))
    try:
        assert isinstance(e.ctx, ContextView)
        assert e.plan.n_ctx == 2 * e.ctx.n_ctx == e.ctx.pool.ctx.n_ctx
        assert e.plan.parts["cpu_kv_cache"] == e.info.kv_bytes_per_token() * e.plan.n_ctx
    finally:
        e.close()


LONG_TEXT = "Here is a list of harbours: " + ", ".join(f"harbour number {i}" for i in range(60)) + "."


def _counting(pool: ContextPool) -> list[int]:
    """The rows of each llama_decode on the pool's context from now on, in order."""
    calls: list[int] = []
    real = pool.ctx.decode

    def counted(tokens, *args, **kw):
        calls.append(len(tokens))
        return real(tokens, *args, **kw)

    pool.ctx.decode = counted  # type: ignore[method-assign]
    return calls


def _in_its_loop(e: Engine, tokens: int) -> tuple[Iterator[str], list[str]]:
    """Engine ``e``'s answer to question 1 begun: its first token out, its loop suspended."""
    e.ctx.seq_rm(0)
    g = e.generate(_prompt(e, 1), 0, GenParams(max_tokens=tokens))
    return g, [next(g)]


def _while_a_step_waits(pool: ContextPool, g1: Iterator[str], out1: list[str], then: Callable[[], T]) -> T:
    """Run ``then`` (another session's prompt) while the next step of ``g1`` (a session in
    its decode loop) waits in the pool's list: the lock is held until that step is queued,
    so the prompt's first piece finds it there. ``g1``'s token goes to ``out1``."""
    with pool.lock:
        t1 = threading.Thread(target=lambda: out1.append(next(g1)))
        t1.start()
        while not pool._steps and t1.is_alive():
            time.sleep(0.001)
        got = then()
    t1.join()
    return got


def test_a_long_prompt_is_decoded_in_pieces_while_another_session_decodes(smol_path):
    """While a session is in its decode loop, another one's long prompt goes in
    PREFILL_CHUNK pieces and the first one's steps go on meanwhile (alone between two
    pieces, or as rows of a piece's batch), not after one long hold of the lock; both
    answers are the ones each gives alone."""
    e1, e2 = _engines(smol_path, 2)
    try:
        long_prompt = e2.chat_tokens([{"role": "user", "content": LONG_TEXT + " Name the first one."}])
        assert len(long_prompt) > 2 * context_pool.PREFILL_CHUNK

        def answer_long() -> str:
            e2.ctx.seq_rm(0)
            return "".join(e2.generate(long_prompt, 0, GenParams(max_tokens=8)))

        alone = {1: _say(e1, 1, tokens=60), 2: answer_long()}
        pool = e1.ctx.pool
        steps_before = pool.batches
        calls = _counting(pool)
        got: dict[int, str] = {}
        t1 = threading.Thread(target=lambda: got.__setitem__(1, _say(e1, 1, tokens=60)))
        t1.start()
        while pool.decoding == 0 and t1.is_alive():  # e1 is in its decode loop
            time.sleep(0.001)
        got[2] = answer_long()  # its prompt in pieces, e1's steps along
        t1.join()
        assert got == alone
        assert pool.batches > steps_before
        c = context_pool.PREFILL_CHUNK
        pieces = [i for i, n in enumerate(calls) if n in (c, c + 1)]
        assert len(pieces) >= 2, calls  # the long prompt went in pieces...
        assert any(calls[i] in (1, c + 1) for i in range(pieces[0] + 1, pieces[-1] + 1)), calls  # ...e1 stepping
    finally:
        e1.close()
        e2.close()


def test_a_waiting_step_rides_in_the_batch_of_another_sessions_prompt_piece(smol_path):
    """A decoding session's next token, waiting while another session's prompt goes in,
    is decoded as a row of that prompt's piece (one llama_decode for both, as llama.cpp's
    server mixes them) and sampled from its own row: both answers are the ones each gives
    alone."""
    e1, e2 = _engines(smol_path, 2)
    pool = e1.ctx.pool
    try:
        long_prompt = e2.chat_tokens([{"role": "user", "content": LONG_TEXT + " Name the first one."}])
        alone1 = _say(e1, 1, tokens=20)
        e2.ctx.seq_rm(0)
        alone2 = "".join(e2.generate(long_prompt, 0, GenParams(max_tokens=8)))
        g1, out1 = _in_its_loop(e1, 20)
        calls = _counting(pool)
        rows_before = pool.batched_rows
        e2.ctx.seq_rm(0)
        g2 = e2.generate(long_prompt, 0, GenParams(max_tokens=8))
        out2 = _while_a_step_waits(pool, g1, out1, lambda: [next(g2)])  # e2's first piece carries e1's step
        assert calls[0] == context_pool.PREFILL_CHUNK + 1, calls
        assert pool.batched_rows == rows_before + 1
        out1 += list(g1)
        out2 += list(g2)
        assert "".join(out1) == alone1 and "".join(out2) == alone2
        assert pool.decoding == 0 and not pool._steps
    finally:
        e1.close()
        e2.close()


def test_a_prompt_cancelled_while_its_pieces_carry_another_sessions_steps_stops_at_once(smol_path):
    """A mixed piece is never aborted (the others' rows ride in it), so a cancel of the
    prompt's own session is checked before each piece: it stops after the piece under way
    (without the check the whole prompt went in, 7 s of it for 1.7K tokens on 2 cores); the
    other session's answer goes on as alone, nothing is left waiting, the cancelled
    session answers again as alone."""
    e1, e2 = _engines(smol_path, 2)
    pool = e1.ctx.pool
    try:
        long_prompt = e2.chat_tokens([{"role": "user", "content": LONG_TEXT + " Name the first one."}])
        c = context_pool.PREFILL_CHUNK
        assert len(long_prompt) > 2 * c
        alone1 = _say(e1, 1, tokens=20)
        e2.ctx.seq_rm(0)
        alone2 = "".join(e2.generate(long_prompt, 0, GenParams(max_tokens=8)))
        g1, out1 = _in_its_loop(e1, 20)
        calls = _counting(pool)
        real = pool.ctx.decode

        def cancel_after_a_mixed_piece(tokens, *args, **kw):
            real(tokens, *args, **kw)
            if len(tokens) == c + 1:
                e2.ctx.cancel()

        pool.ctx.decode = cancel_after_a_mixed_piece  # type: ignore[method-assign]
        e2.ctx.seq_rm(0)
        cut = _while_a_step_waits(pool, g1, out1, lambda: "".join(e2.generate(long_prompt, 0, GenParams(max_tokens=8))))
        e2.ctx.clear_cancel()
        assert cut == "" and calls == [c + 1], calls  # one piece went in, with e1's step
        out1 += list(g1)
        assert "".join(out1) == alone1
        assert pool.decoding == 0 and not pool._steps
        e2.ctx.seq_rm(0)
        assert "".join(e2.generate(long_prompt, 0, GenParams(max_tokens=8))) == alone2
    finally:
        e1.close()
        e2.close()


def test_steps_run_before_a_prompt_piece_are_not_stopped_by_that_prompts_cancel(smol_path, monkeypatch):
    """When a piece and the waiting steps do not fit one ubatch, the steps are decoded alone
    first; a cancel of the prompt's session arriving then aborts neither them (the abort
    callback looks at the session whose call runs: none for the others' rows) nor their
    answer; the prompt stops at its piece."""
    e1, e2 = _engines(smol_path, 2)
    pool = e1.ctx.pool
    try:
        long_prompt = e2.chat_tokens([{"role": "user", "content": LONG_TEXT + " Name the first one."}])
        alone1 = _say(e1, 1, tokens=20)
        g1, out1 = _in_its_loop(e1, 20)
        monkeypatch.setattr(pool.ctx, "n_ubatch", 8)  # no piece fits beside a step: the steps go first
        real = pool.ctx.decode

        def cancel_e2_during_a_step(tokens, *args, **kw):
            if len(tokens) == 1:
                e2.ctx.cancel()
            return real(tokens, *args, **kw)

        monkeypatch.setattr(pool.ctx, "decode", cancel_e2_during_a_step)
        e2.ctx.seq_rm(0)
        cut = _while_a_step_waits(pool, g1, out1, lambda: "".join(e2.generate(long_prompt, 0, GenParams(max_tokens=8))))
        monkeypatch.setattr(pool.ctx, "decode", real)
        e2.ctx.clear_cancel()
        assert cut == ""
        out1 += list(g1)
        assert "".join(out1) == alone1
        assert pool.decoding == 0 and not pool._steps
    finally:
        e1.close()
        e2.close()
