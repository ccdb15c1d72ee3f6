"""`localsym serve --parallel 2` (the sessions share one llama.cpp context, their decoding
steps batched) hammered by real `openai` clients at once: streams, one left mid-answer, a
JSON-schema answer (a grammar sampler in a shared batch), a tool call (decoded in the
session's REBUILD sequence); then Ctrl+C during a batched decode and kill -9 mid-answer,
each followed by a restart that finds every session whole. SmolLM2 under Qwen 2.5's chat
template (it shows tools to the model)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import openai
import pytest
from conftest import SMOL, register_cached
from gguf_retemplate import with_template
from test_server import SESSION, Server
from test_server_tools import PERSON, TOOLS_MODEL, WEATHER, _qwen_template

from localsym.memory.container import atomic_write


@pytest.fixture
def home(tmp_path, monkeypatch, smol_path) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("LOCALSYM_HOME", str(h))
    register_cached(SMOL)
    dst = with_template(smol_path, tmp_path / f"{TOOLS_MODEL}.gguf", _qwen_template())
    r = subprocess.run(
        [sys.executable, "-m", "localsym", "pull", str(dst)], env=dict(os.environ), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return h


def _serve(home: Path) -> Server:
    return Server(home, "--model", TOOLS_MODEL, "--parallel", "2", "--max-sessions", "3")


def _chat(client: openai.OpenAI, session: str, text: str, **kw) -> openai.types.chat.ChatCompletion:
    return client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": text}],
        temperature=0,
        extra_headers={SESSION: session},
        **{"max_tokens": 24, **kw},
    )


def _stream(
    client: openai.OpenAI,
    session: str,
    text: str,
    max_tokens: int,
    leave_after: int | None = None,
    got: list[str] | None = None,
) -> str:
    got = [] if got is None else got
    s = client.chat.completions.create(
        model=TOOLS_MODEL,
        messages=[{"role": "user", "content": text}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        extra_headers={SESSION: session},
    )
    for chunk in s:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
        if leave_after is not None and len(got) >= leave_after:
            break
    s.close()
    return "".join(got)


def _at_once(*jobs: Callable[[], object]) -> list[object]:
    out: list[object] = [None] * len(jobs)

    def run(i: int) -> None:
        try:
            out[i] = jobs[i]()
        except Exception as e:  # noqa: BLE001 - checked by the caller
            out[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _whole(server: Server, session: str) -> list[dict]:
    """The session's messages, checked whole: user and assistant in turn."""
    msgs = server.messages(session)
    assert [m["role"] for m in msgs] == ["user", "assistant"] * (len(msgs) // 2), msgs
    return msgs


def test_parallel_serve_under_clients_at_once_then_ctrl_c_and_kill_9(home):
    server = _serve(home)
    try:
        c = server.oa()
        fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
        cut, plain, js, tool = _at_once(
            lambda: _stream(c, "pa", "Count from 1 to 100, separated by commas.", 200, leave_after=3),
            lambda: _stream(c, "pb", "Tell me one fact about owls.", 32),
            lambda: _chat(c, "pc", "Describe a pilot as JSON.", response_format=fmt, max_tokens=60),
            lambda: _chat(
                c, "pb", "What is the weather in Oslo?", tools=[WEATHER], tool_choice="required", max_tokens=40
            ),
        )
        for r in (cut, plain, js, tool):
            assert not isinstance(r, Exception), r  # no 5xx, no dropped connection
        assert isinstance(cut, str) and cut and isinstance(plain, str) and plain
        assert isinstance(js, openai.types.chat.ChatCompletion)
        if js.choices[0].finish_reason == "stop":
            jsonschema.validate(json.loads(js.choices[0].message.content or ""), PERSON)
        assert isinstance(tool, openai.types.chat.ChatCompletion)
        call = (tool.choices[0].message.tool_calls or [None])[0]
        assert call is not None and call.function.name == "get_weather"
        # the client that left: its answer stored as far as it got; the tool call stored nowhere
        a = _whole(server, "pa")
        assert len(a) == 2 and a[1]["content"].startswith(cut) and len(a[1]["content"]) < 200
        assert [m["content"] for m in _whole(server, "pb")][::2] == ["Tell me one fact about owls."]
        assert len(_whole(server, "pc")) == 2
        # a fourth session evicts the least recently used idle one (--max-sessions 3), which
        # comes back whole with its memory
        assert _chat(c, "pd", "Say hello.", max_tokens=4).choices[0].message.content
        again = _chat(c, "pa", "Say OK.", max_tokens=4)
        assert again.model_extra["localsym"]["mode"] == "continue" and len(_whole(server, "pa")) == 4

        # Ctrl+C while two answers decode in shared batches: a clean exit, both stored. Two new
        # sessions asked the same: the same blocks (content-addressed), sealed at the same time
        got: dict[str, list[str]] = {"pe": [], "pf": []}
        streams = [
            threading.Thread(
                target=lambda s=s: _at_once(
                    lambda: _stream(c, s, "Count from 1 to 500, one number per line.", 400, got=got[s])
                ),
                daemon=True,
            )
            for s in got
        ]
        for t in streams:
            t.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(len(g) >= 2 for g in got.values()):
            time.sleep(0.05)
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGINT)
        rc = server.proc.wait(60)
        # the running answers (400 tokens asked) were stopped at once, not waited for through
        # uvicorn's 10 s grace, and nothing was sent to the workers once they had shut down
        took = time.monotonic() - t0
        assert rc in (0, 130) and took < 40, took
        log = server.log.read_text(errors="replace")
        assert "Traceback" not in log and "cannot schedule new futures" not in log, log[-3000:]
    finally:
        server.stop()
    for t in streams:
        t.join(10)

    server = _serve(home)
    try:
        c = server.oa()
        before = {s: _whole(server, s) for s in ("pa", "pb", "pc", "pd", "pe", "pf")}
        assert len(before["pa"]) == 4 and len(before["pb"]) == 2
        assert len(before["pe"]) == len(before["pf"]) == 2
        # the same question, greedy: the answer stopped first is the start of the other
        (qe, ae), (qf, af) = ([m["content"] for m in before[x]] for x in ("pe", "pf"))
        assert qe == qf and (ae.startswith(af) or af.startswith(ae)), (ae, af)
        # kill -9 mid-answer: the answer in flight is lost, nothing else
        killer = threading.Thread(target=lambda: _at_once(lambda: _stream(c, "pc", "Count to 50.", 200)), daemon=True)
        killer.start()
        time.sleep(2.0)
        server.proc.kill()
        server.proc.wait()
        killer.join(30)
    finally:
        server.stop()

    server = _serve(home)
    try:
        c = server.oa()
        for s, msgs in before.items():
            now = _whole(server, s)
            assert now[: len(msgs)] == msgs and len(now) - len(msgs) in (0, 2)
        r = _chat(c, "pc", "Say OK.", max_tokens=4)
        assert r.choices[0].message.content and r.model_extra["localsym"]["mode"] == "continue"
    finally:
        server.stop()


def test_two_threads_writing_the_same_block_file_at_once(tmp_path):
    """Sessions of one server that answer alike (the same question to new sessions, greedy)
    seal the same content-addressed blocks at the same moment: each write has a temporary
    file of its own (one per process was truncated and renamed away under the other, whose
    turn then failed to store with FileNotFoundError)."""
    path = tmp_path / "ab" / "block.lsb"
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def write(byte: bytes) -> None:
        for _ in range(200):
            barrier.wait()
            try:
                atomic_write(path, [byte * 65536], sync=False)
            except OSError as e:
                errors.append(e)

    threads = [threading.Thread(target=write, args=(b,)) for b in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert path.read_bytes() in (b"a" * 65536, b"b" * 65536)  # one write whole, never a mix
    assert [p.name for p in path.parent.iterdir()] == ["block.lsb"]  # no temporary file left
