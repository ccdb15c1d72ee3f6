"""`localsym chat` and `localsym run` as clients of a running `localsym serve` (a real uvicorn
server in a subprocess, on SmolLM2): they attach to it, so the chat, `run` and an editor
share one model and one session; `--no-server` and a dead server's record run in-process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import SMOL, module_home, register_cached, run_cli
from test_server import Server

from localsym.session import InProcess, RunOptions, connect
from localsym.tui import ChatApp
from localsym.tui.widgets import MessageView, PromptInput

SESSION = "X-Localsym-Session"


@pytest.fixture(scope="module")
def client_home(tmp_path_factory, smol_path) -> Iterator[Path]:
    with module_home(tmp_path_factory, "client") as h:
        yield h


@pytest.fixture(scope="module")
def root(client_home) -> Path:
    r = client_home.parent / "root"
    r.mkdir()
    (r / "facts.py").write_text('MAGIC_WORD = "plum-kettle"  # the word the tests look for\n')
    return r


@pytest.fixture(scope="module")
def server(client_home, root) -> Iterator[Server]:
    s = Server(client_home, "--allow-root", str(root))
    yield s
    s.stop()


def _open_on_server(server: Server) -> dict[str, bool]:
    """Which sessions the server holds open now (listing opens none)."""
    rows = httpx.get(f"{server.url}/localsym/sessions", timeout=30).json()["sessions"]
    return {r["name"]: r["open"] for r in rows}


def test_run_attaches_and_an_openai_client_sees_the_turn(server, client_home):
    home = client_home
    q = "What is the capital of France?"
    r = run_cli("run", SMOL, q, "--session", "shared", "-n", "16", "--temp", "0", home=home, timeout=120)
    assert r.returncode == 0, r.stderr
    answer = r.stdout.strip()
    assert answer and "note" not in r.stderr, r.stderr  # attached: nothing to say
    assert _open_on_server(server).get("shared") is True  # the server ran it, not this process
    assert [m["content"].strip() for m in server.messages("shared")][:2] == [q, answer]

    # an editor naming the session resends the conversation: the server recognises run's turn
    reply = server.oa().chat.completions.create(
        model=SMOL,
        messages=[
            {"role": "user", "content": q},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": "And of Italy?"},
        ],
        max_tokens=8,
        temperature=0,
        extra_headers={SESSION: "shared"},
    )
    extra = reply.model_extra["localsym"]
    assert extra["mode"] == "incremental" and extra["history_messages"] == 0, extra

    # `--no-server` never opens a session the server holds behind its back: the lock says busy
    busy = run_cli("run", SMOL, "Hi", "--session", "shared", "--no-server", "-n", "4", home=home, timeout=120)
    assert busy.returncode == 1 and "busy" in busy.stderr and "serve" in busy.stderr, busy.stderr


def test_the_native_routes_check_their_input(server):
    def post(path: str, body) -> httpx.Response:
        return httpx.post(f"{server.url}{path}", content=json.dumps(body), timeout=30)

    for path, body, word in (
        ("/localsym/ask", {"question": " "}, "question"),
        ("/localsym/ask", {"question": "Hi", "params": {"temp": "hot"}}, "temp"),
        ("/localsym/ask", {"question": "Hi", "params": {"max_tokens": 0}}, "max_tokens"),
        ("/localsym/ask", {"question": "Hi", "session": "ephemeral-x"}, "ephemeral"),
        ("/localsym/ask", {"question": "Hi", "session": "bad/name"}, "bad session name"),
        ("/localsym/ask", {"question": "Hi", "raw": "yes"}, "raw"),
        ("/localsym/open", {}, "name the session"),
        ("/localsym/ask", {"question": "Hi", "x": json.loads("[" * 70 + "]" * 70)}, "nests"),
    ):
        r = post(path, body)
        assert r.status_code == 400 and word in r.json()["error"]["message"], (body, r.text)
    info = httpx.get(f"{server.url}/localsym/server", timeout=30).json()
    assert info["model"] == SMOL and info["pid"] == server.proc.pid and info["load"] is True


class _Recorder:
    """The chat's Markdown stream, with the pieces written to it recorded."""

    def __init__(self, stream) -> None:
        self.stream, self.pieces = stream, []

    async def write(self, piece: str) -> None:
        self.pieces.append(piece)
        await self.stream.write(piece)

    async def stop(self) -> None:
        await self.stream.stop()


async def wait_until(pilot, cond, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not met in time")


def _notes(app) -> list[str]:
    return [m.text for m in app.query(MessageView) if m.role == "note"]


async def _send(pilot, app, text: str) -> None:
    app.query_one(PromptInput).text = text
    await pilot.press("enter")


async def test_the_chat_attaches_streams_loads_and_stops_on_the_server(server, root):
    sessions = connect(SMOL, "tui")
    assert sessions.remote and not sessions.notes
    app = ChatApp(SMOL, "tui", RunOptions(n_ctx=2048, vram="cpu"), sessions=sessions)
    recorders: list[_Recorder] = []
    real = app._start_stream

    def recording(view):
        recorders.append(_Recorder(real(view)))
        return recorders[-1]

    app._start_stream = recording  # type: ignore[method-assign]
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None and not app.busy)
        assert any("attached to localsym serve" in n for n in _notes(app))
        assert f"127.0.0.1:{server.port}" in app.sub_title

        await _send(pilot, app, "What is 2+2? Answer with a number.")
        await wait_until(pilot, lambda: recorders and not app.busy)
        answer = [m for m in app.query(MessageView) if m.role == "assistant"][-1].text
        assert len(recorders[-1].pieces) > 1 and answer.startswith("".join(recorders[-1].pieces))  # it streamed
        held = server.messages("tui")
        assert held[0]["content"] == "What is 2+2? Answer with a number." and held[1]["content"] in answer
        assert "smollm2-135m" in str(app.query_one("#status").render())

        # /load goes to the server, which reads under its --allow-root only
        await _send(pilot, app, f"/load {root}")
        await wait_until(pilot, lambda: any("loaded **1 files**" in n for n in _notes(app)))
        await wait_until(pilot, lambda: not app.busy)
        await _send(pilot, app, "/load /etc/hostname")
        await wait_until(pilot, lambda: any("cannot load" in n for n in _notes(app)))
        refused = [n for n in _notes(app) if "cannot load" in n][-1]
        assert "refused it" in refused and "outside the allowed roots" in refused and "\n" not in refused

        # Esc stops the answer on the server too: it stores what it made, and the chat goes on
        await _send(pilot, app, "Write a long story about a dragon.")
        await wait_until(pilot, lambda: len(recorders) == 2 and len(recorders[-1].pieces) >= 3)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.busy)
        stopped = [m for m in app.query(MessageView) if m.role == "assistant"][-1].text
        assert "(stopped)" in stopped
        shown = "".join(recorders[-1].pieces)
        story = [m for m in server.messages("tui") if m["role"] == "assistant"][-1]["content"]
        assert story.startswith(shown.strip()[:20])
        assert len(story) < len(shown) + 400  # the server stopped within a few tokens, not 512 later


def test_no_server_does_not_attach(server, client_home):
    home = client_home
    assert isinstance(connect(SMOL, "solo", no_server=True), InProcess)
    r = run_cli("run", SMOL, "Hi", "--session", "solo", "--no-server", "-n", "4", home=home, timeout=180)
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    assert _open_on_server(server).get("solo") is False  # on disk, never opened by the server


def _record(home: Path, pid: int, created: float | None, address: str) -> None:
    run = home / "data" / "run"
    run.mkdir(parents=True, exist_ok=True)
    rec = {"kind": "serve", "pid": pid, "started": time.time(), "create_time": created, "model": SMOL}
    (run / f"serve-{pid}.json").write_text(json.dumps(rec | {"address": address}))


def test_a_dead_or_silent_server_record_falls_back_with_a_note(tmp_path, monkeypatch, smol_path):
    home = tmp_path / "home"
    monkeypatch.setenv("LOCALSYM_HOME", str(home))
    register_cached(SMOL)
    killed = subprocess.Popen(["sleep", "60"])
    created = psutil.Process(killed.pid).create_time()
    killed.kill()  # -9: it never removes its record
    killed.wait()
    _record(home, killed.pid, created, "127.0.0.1:9")
    silent = subprocess.Popen(["sleep", "120"])  # alive, but nothing listens where it says
    try:
        _record(home, silent.pid, psutil.Process(silent.pid).create_time(), "127.0.0.1:9")
        sessions = connect(SMOL, "x")
        assert isinstance(sessions, InProcess) and len(sessions.notes) == 2
        _record(home, killed.pid, created, "127.0.0.1:9")  # connect removed the dead one's record
        r = run_cli("run", SMOL, "Hi", "-n", "4", home=home, timeout=180)
        assert r.returncode == 0 and r.stdout.strip(), r.stderr
        notes = [line for line in r.stderr.splitlines() if line.startswith("localsym: note:")]
        assert len(notes) == 2, r.stderr
        assert any(f"(pid {killed.pid}) is gone; running in this process" in n for n in notes)
        assert any(f"(pid {silent.pid}): it does not answer; running in this process" in n for n in notes)
        assert not (home / "data" / "run" / f"serve-{killed.pid}.json").exists()
    finally:
        silent.kill()
        silent.wait()


async def test_the_attached_chat_shows_an_editors_turns(server, monkeypatch):
    """An editor naming the chat's session answers there; the chat shows its exchange without
    a keypress (it looks every ``POLL_S``), never shows its own turn twice, and a client that
    replaces the history (its copy of the conversation wins) is shown as the session now."""

    monkeypatch.setattr(ChatApp, "POLL_S", 0.3)
    app = ChatApp(SMOL, "live", RunOptions(n_ctx=2048, vram="cpu"), sessions=connect(SMOL, "live"))

    def editor(messages: list[dict]) -> str:
        r = server.oa().chat.completions.create(
            model=SMOL, messages=messages, max_tokens=8, temperature=0, extra_headers={SESSION: "live"}
        )
        return r.choices[0].message.content or ""

    def shown(role: str) -> list[str]:
        return [m.text for m in app.query(MessageView) if m.role == role]

    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.session is not None and not app.busy)
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: len(shown("assistant")) == 1 and not app.busy)
        q = "What is the capital of France?"
        history = [{"role": m["role"], "content": m["content"]} for m in server.messages("live")]
        assert [m["role"] for m in history] == ["user", "assistant"]
        answer = await asyncio.to_thread(editor, [*history, {"role": "user", "content": q}])
        await wait_until(pilot, lambda: q in shown("user"), timeout=30)
        await wait_until(pilot, lambda: len(shown("assistant")) == 2, timeout=30)
        assert shown("user") == ["Say hello.", q] and answer.strip() in shown("assistant")[1]
        await pilot.pause(1.0)  # a few more looks: nothing is shown twice
        assert shown("user") == ["Say hello.", q]

        # a client whose copy of the conversation differs: the session is rebuilt from it (its
        # earlier turns as the new session's memory, the new exchange its first message)
        other = "Name a colour."
        rewritten = [{"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "No."}]
        await asyncio.to_thread(editor, [*rewritten, {"role": "user", "content": other}])
        await wait_until(pilot, lambda: shown("user") == [other], timeout=30)
        assert len(shown("assistant")) == 1


async def test_quitting_the_attached_chat_does_not_wait_for_a_frozen_server(server, monkeypatch):
    """A look for other clients' turns that a frozen server (SIGSTOP) never answers does not
    hold the chat's exit for the look's timeout (10 s): the look runs on a daemon thread."""
    monkeypatch.setattr(ChatApp, "POLL_S", 0.2)
    app = ChatApp(SMOL, "frozen", RunOptions(n_ctx=2048, vram="cpu"), sessions=connect(SMOL, "frozen"))
    t0 = 0.0
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_until(pilot, lambda: app.session is not None and not app.busy)
            os.kill(server.proc.pid, signal.SIGSTOP)
            await wait_until(pilot, lambda: app._polling, timeout=10)
            await pilot.pause(0.5)
            assert app._polling  # the look waits on the frozen server
            t0 = time.monotonic()
            await pilot.press("ctrl+q")
        # what `localsym chat` does last on its way out (App.run is asyncio.run): the loop's
        # executor threads are joined, a worker's among them
        await asyncio.get_running_loop().shutdown_default_executor()
        quit_s = time.monotonic() - t0
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    assert quit_s < 3.0, quit_s
    assert httpx.get(f"{server.url}/api/version", timeout=30).status_code == 200  # the server goes on
