"""Fault injection against a real `localsym serve` (uvicorn in a subprocess, SmolLM2, real
HTTP on 127.0.0.1): hostile bodies and names get a 4xx in their API's shape with a request
id, never a 500 or a dead server; a diverged history never replaces a session of the
user's; small contexts never abort; a port in use says so before any banner."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import SMOL, module_home, run_cli
from test_server import Server

SESSION = "X-Localsym-Session"


@pytest.fixture(scope="module")
def home(tmp_path_factory, smol_path) -> Iterator[Path]:
    with module_home(tmp_path_factory, "faults-serve") as h:
        yield h


@pytest.fixture(scope="module")
def server(home) -> Iterator[Server]:
    from localsym.session import RunOptions, Session, SessionConfig

    # a session of the user's whose name is what the server once used for set-aside histories
    with Session.open("notes.prev", SMOL, RunOptions(n_ctx=2048, vram="cpu"), SessionConfig(block_tokens=64)) as s:
        s.ingest_text("The locker code is 4471.\n" * 4, "mine.txt", "file")
    s = Server(home, "--max-sessions", "2", "--queue", "4")
    yield s
    s.stop()


def _chat(server: Server, session: str, messages: list[dict]) -> httpx.Response:
    body = {"model": SMOL, "messages": messages, "max_tokens": 4, "temperature": 0}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, headers={SESSION: session}, timeout=120)


def _info(server: Server, name: str) -> dict:
    r = httpx.get(f"{server.url}/localsym/sessions/{name}", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _diverge(server: Server, name: str) -> str:
    """Two turns on ``name``, then a request whose history contradicts them: the session's
    old history is set aside; returns the name it was set aside under."""
    first = _chat(server, name, [{"role": "user", "content": "Hi there."}])
    assert first.status_code == 200, first.text
    edited = [
        {"role": "user", "content": "Hello, an edited first message."},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "And now?"},
    ]
    r = _chat(server, name, edited)
    assert r.status_code == 200, r.text
    extra = r.json()["localsym"]
    assert extra["mode"] == "reset"
    assert r.headers["x-localsym-previous-session"] == extra["previous_session"]
    return extra["previous_session"]


def test_a_diverged_history_never_replaces_a_users_session(server):
    before = _info(server, "notes.prev")
    prev = _diverge(server, "notes")
    assert prev == "notes~prev"
    after = _info(server, "notes.prev")  # the user's own session: untouched
    assert after["total_tokens"] == before["total_tokens"] > 0 and after["blocks"] == before["blocks"]
    assert _info(server, prev)["messages"][0]["content"] == "Hi there."  # the old history, kept
    # notes~prev is open in the server now (just read): the next one goes beside it, not over it
    again = _diverge(server, "notes")
    assert again == "notes~prev2" and _info(server, prev)["messages"][0]["content"] == "Hi there."
    assert _info(server, "notes.prev")["total_tokens"] == before["total_tokens"]


def test_names_sharing_a_prefix_never_share_a_set_aside_history(server):
    a, b = "p" * 59 + "aaaaa", "p" * 59 + "bbbbb"  # 64 characters, the first 59 alike
    prev_a, prev_b = _diverge(server, a), _diverge(server, b)
    assert prev_a != prev_b
    assert _info(server, prev_a)["messages"] and _info(server, prev_b)["messages"]
    r = httpx.get(f"{server.url}/localsym/sessions", timeout=60)
    names = {row["name"] for row in r.json()["sessions"]}
    assert {a, b, prev_a, prev_b} <= names


def test_clients_cannot_create_set_aside_names(server):
    r = _chat(server, "fresh~prev", [{"role": "user", "content": "Hi"}])
    assert r.status_code == 400 and "~" in r.json()["error"]["message"]


def _assert_client_error(r: httpx.Response, path: str, status: int = 400) -> None:
    assert r.status_code == status, (path, r.status_code, r.text)
    assert r.headers.get("x-request-id", "").startswith("req-")
    err = r.json()["error"]
    if path.startswith("/api/"):
        assert isinstance(err, str) and err
    else:
        assert err["message"] and err["type"] == "invalid_request_error"


def test_hostile_bodies_are_400_in_each_shape(server):
    paths = ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate", "/api/show", "/localsym/load")
    deep = b"[" * 200_000 + b"]" * 200_000
    deep_in_field = b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    lone = b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800 there"}], "prompt": "\\udfff"}' % (
        SMOL.encode()
    )
    lone_key = b'{"\\ud800": 1}'
    for path in paths:
        for body in (deep, deep_in_field, lone, lone_key):
            r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
            _assert_client_error(r, path)
    log = server.log.read_text()
    assert "Traceback" not in log and "RecursionError" not in log


@pytest.mark.parametrize("name", ["a%20b", "-x", "x" * 65, "a%00b", "%C3%A9t%C3%A9", "%ED%A0%80", "a~b", ".hidden"])
def test_bad_session_names_are_400_on_every_session_route(server, name):
    for method in ("GET", "DELETE"):
        r = httpx.request(method, f"{server.url}/localsym/sessions/{name}", timeout=60)
        _assert_client_error(r, "/localsym/sessions")
    r = _chat(server, "ok-name", [{"role": "user", "content": "Hi"}])
    assert r.status_code == 200  # and the server lives on


def test_client_errors_are_one_log_line_and_500s_name_the_request(server):
    r = httpx.post(server.url + "/api/chat", content=b"[" * 100_000, timeout=60)
    rid = r.headers["x-request-id"]
    assert r.status_code == 400
    lines = [line for line in server.log.read_text().splitlines() if rid in line]
    assert len(lines) == 1 and "400" in lines[0]


def test_serve_with_a_tiny_context_raises_it_at_start_and_answers(home):
    s = Server(home, "-c", "2")
    try:
        first = s.log.read_text().splitlines()
        assert any("-c 2 raised to" in line for line in first), first
        r = _chat(s, "tiny", [{"role": "user", "content": "Hi"}])
        assert r.status_code == 200, r.text
        assert s.proc.poll() is None  # no SIGABRT
    finally:
        s.stop()
    assert s.proc.returncode != -6


def test_serve_on_a_port_in_use_is_one_line_and_no_banner(home):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_cli("serve", "--port", str(port), "-c", "2048", "--vram", "cpu", home=home, timeout=120)
    assert r.returncode == 1, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "in use" in lines[0] and str(port) in lines[0], r.stderr
    assert " on http://" not in r.stderr


def test_a_tiny_context_on_any_command_never_aborts(home):
    for c in ("1", "2"):
        for args in (
            ("run", SMOL, "Hi", "-n", "4", "--no-server"),  # in this process even while a test's serve runs
            ("ask", "What is two plus two?", "--session", f"tiny{c}", "-n", "4"),
        ):
            r = run_cli(*args, "-c", c, "--vram", "cpu", home=home)
            assert r.returncode == 0, (args, r.returncode, r.stderr)
            assert f"-c {c} raised to" in r.stderr and "Traceback" not in r.stderr


def test_a_chat_with_a_tiny_context_opens(home):
    """`chat -c 1` opens its session as the TUI does (Session.open with the run options)."""
    code = (
        "from localsym.session import RunOptions, Session, GenParams\n"
        "with Session.open('chat1', opts=RunOptions(n_ctx=1, vram='cpu')) as s:\n"
        "    t = s.ask('Hi', GenParams(max_tokens=4)); t.text()\n"
        "    print(s.engine.ctx.n_ctx)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert int(r.stdout.split()[-1]) >= 256


def test_the_server_survives_a_hostile_soak_with_sessions_intact(server):
    """The small version of `localsym bench soak` (1,000 requests there): every hostile kind
    from 8 clients at once, good requests among them; afterwards alive, a good answer, the
    sessions unchanged, no traceback in the log."""
    from localsym.bench.soak import run_soak

    r = run_soak(server.port, server.proc, server.log, requests=100, clients=8)
    assert r["ok"], {k: r[k] for k in ("broken", "status", "alive", "good_after", "sessions_intact")}
    assert r["hostile"] >= 70 and r["4xx"] >= r["hostile"] - 4 and r["5xx_not_503"] == 0
