"""`localsym serve` against real clients nobody here wrote (the `openai` and `ollama`
packages) and a real uvicorn server in a subprocess, on SmolLM2."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx  # the test extra has them all: a missing one fails here rather than skipping
import ollama
import openai
import pytest
from conftest import SMOL, module_home

MODEL = SMOL
SESSION = "X-Localsym-Session"
FLAGS = ("-c", "2048", "--vram", "cpu", "-t", "2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path, *args: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home / f"server-{self.port}.log"
        env = dict(os.environ, LOCALSYM_HOME=str(home))
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localsym", "serve", "--port", str(self.port), *FLAGS, *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/api/version", timeout=1).status_code in (200, 401):
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not start:\n{self.log.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def oa(self, **kw) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.url}/v1", api_key=kw.pop("api_key", "unused"), max_retries=0, timeout=120, **kw
        )

    def messages(self, session: str) -> list[dict]:
        r = httpx.get(f"{self.url}/localsym/sessions/{session}", timeout=60)
        r.raise_for_status()
        return r.json()["messages"]


@pytest.fixture(scope="module")
def server_home(tmp_path_factory, smol_path) -> Iterator[Path]:
    with module_home(tmp_path_factory, "serve") as h:
        yield h


@pytest.fixture(scope="module")
def root(server_home) -> Path:
    r = server_home.parent / "root"
    (r / "pkg").mkdir(parents=True)
    (r / "pkg" / "retry.py").write_text("RETRY_DELAY_S = 7  # seconds between attempts\n")
    (r / "escape").symlink_to("/etc")
    return r


@pytest.fixture(scope="module")
def server(server_home, root) -> Iterator[Server]:
    s = Server(server_home, "--allow-root", str(root), "--max-sessions", "2", "--queue", "1")
    yield s
    s.stop()


def test_openai_chat_streaming_and_not(server):
    client = server.oa()
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colors."}], max_tokens=8, temperature=0
    )
    text = r.choices[0].message.content
    assert text and r.choices[0].finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 0
    assert r.model_extra["localsym"]["mode"] == "ephemeral"  # no session named: nothing kept

    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name three colors."}],
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == text  # greedy, same prompt, fresh session each time
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens

    # a stop string is cut off, as OpenAI does
    word = text.split()[1]
    cut = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three colors."}],
        max_tokens=8,
        temperature=0,
        stop=[word],
    )
    assert cut.choices[0].message.content == text[: text.index(word)]

    done = client.completions.create(model=MODEL, prompt="def add(a, b):\n", max_tokens=6, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens <= 6
    assert [m.id for m in client.models.list().data] == [MODEL]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=7)


def test_ollama_chat_and_generate(server):
    client = ollama.Client(host=server.url, headers={SESSION: "olla"})
    r = client.chat(
        model=f"{MODEL}:latest",
        messages=[{"role": "user", "content": "Say hello."}],
        stream=False,
        options={"temperature": 0, "num_predict": 8},
    )
    assert r.done and r.done_reason in ("stop", "length") and r.message.content
    assert 0 < r.eval_count <= 8 and r.prompt_eval_count > 0 and r.total_duration > 0
    parts = list(
        client.chat(
            model=MODEL,
            messages=[
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": r.message.content},
                {"role": "user", "content": "Again."},
            ],
            stream=True,
            options={"temperature": 0, "num_predict": 6},
        )
    )
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts)
    assert [m["role"] for m in server.messages("olla")] == ["user", "assistant"] * 2  # resend: only the new turn

    g = client.generate(model=MODEL, prompt="The sky is", options={"temperature": 0, "num_predict": 5}, stream=False)
    assert g.done and g.response and g.eval_count <= 5
    assert [m.model for m in client.list().models] == [f"{MODEL}:latest"]
    assert client.ps().models  # a session is open
    assert client.show(MODEL).modelinfo["llama.context_length"] == 2048
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404


def test_two_sessions_keep_separate_histories(server):
    client = server.oa()
    q = {"a": "My cat is called Tom. Reply with OK.", "b": "My dog is called Rex. Reply with OK."}
    first = {}
    for name, text in q.items():
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": text}],
            max_tokens=6,
            temperature=0,
            extra_headers={SESSION: f"sep-{name}"},
        )
        first[name] = r.choices[0].message.content
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        max_tokens=6,
        temperature=0,
        extra_headers={SESSION: "sep-a"},
        messages=[
            {"role": "user", "content": q["a"]},
            {"role": "assistant", "content": first["a"]},
            {"role": "user", "content": "What is my cat called?"},
        ],
    )
    assert raw.headers["x-localsym-mode"] == "incremental"  # session a's own history, not b's
    a, b = server.messages("sep-a"), server.messages("sep-b")
    assert [m["content"] for m in a][::2] == [q["a"], "What is my cat called?"]
    assert [m["content"] for m in b] == [q["b"], first["b"]]
    # OpenAI's `user` names no session unless the server was started with --session-from-user:
    # a web UI sends one `user` for all of a person's separate chats
    r = client.chat.completions.create(
        model=MODEL, max_tokens=2, temperature=0, user="sep-a", messages=[{"role": "user", "content": "Hi"}]
    )
    assert r.model_extra["localsym"]["mode"] == "ephemeral" and len(server.messages("sep-a")) == len(a)


def _turn_text(i: int) -> str:
    from localsym.bench.corpus import stdlib_text

    src = stdlib_text(20000)
    return f"Here is some code:\n{src[i * 900 : (i + 1) * 900]}\nWhat does it define?"


def test_resent_conversation_costs_only_its_new_message(server):
    client = server.oa()
    convo: list[dict] = []
    seen = []
    for i in range(4):
        convo.append({"role": "user", "content": _turn_text(i)})
        r = client.chat.completions.create(
            model=MODEL, messages=convo, max_tokens=8, temperature=0, extra_headers={SESSION: "long"}
        )
        info = r.model_extra["localsym"]
        prefilled = r.usage.prompt_tokens - r.usage.prompt_tokens_details.cached_tokens
        seen.append((prefilled, info))
        convo.append({"role": "assistant", "content": r.choices[0].message.content})
        assert info["mode"] == ("new" if i == 0 else "incremental") and info["history_messages"] == 0
    conversation_tokens = seen[-1][1]["total_tokens"]
    for prompt_tokens, _ in seen[1:]:  # each turn prefilled its own message only
        assert prompt_tokens < 0.45 * conversation_tokens
        assert abs(prompt_tokens - seen[0][0]) < 0.5 * seen[0][0]

    # close "long" (two other sessions take the two slots), then resend: its blocks come
    # back from the tiers, restored rather than recomputed
    for other in ("lru-1", "lru-2"):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1, extra_headers={SESSION: other}
        )
    assert "long" not in httpx.get(f"{server.url}/api/ps").json()["models"][0]["localsym"]["sessions"]
    convo.append({"role": "user", "content": "Which of these was longest?"})
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=convo, max_tokens=4, temperature=0, extra_headers={SESSION: "long"}
    )
    assert raw.headers["x-localsym-mode"] == "incremental"
    assert int(raw.headers["x-localsym-restored-blocks"]) >= 1
    assert int(raw.headers["x-localsym-recomputed-blocks"]) == 0
    usage = raw.parse().usage
    # prefilled: the new message and the system prompt the reopened session decoded, no block
    assert usage.prompt_tokens - usage.prompt_tokens_details.cached_tokens < 80
    assert usage.prompt_tokens > conversation_tokens // 2  # the prompt it answered from: the conversation

    # without a session name, the history is ingested as text; the same history again is
    # reused block for block (content-addressed), nothing recomputed
    reports = []
    for _ in range(2):
        r = client.chat.completions.create(model=MODEL, messages=convo[:5] + [convo[-1]], max_tokens=2, temperature=0)
        reports.append(r.model_extra["localsym"])
    assert reports[0]["mode"] == "ephemeral" and reports[0]["history_messages"] == 5
    assert reports[0]["history_computed_blocks"] >= 2
    assert reports[1]["history_computed_blocks"] == 0
    assert (
        reports[1]["history_reused_blocks"]
        == reports[0]["history_computed_blocks"] + reports[0]["history_reused_blocks"]
    )


def test_disconnect_stops_the_answer(server):
    client = server.oa()
    ask = [{"role": "user", "content": "Count from 1 to 300, separated by commas."}]
    stream = client.chat.completions.create(
        model=MODEL, messages=ask, max_tokens=400, temperature=0, stream=True, extra_headers={SESSION: "cut"}
    )
    got = []
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got.append(chunk.choices[0].delta.content)
        if len(got) >= 4:
            break
    stream.close()  # the client leaves
    t0 = time.monotonic()
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Thanks."}],
        max_tokens=3,
        temperature=0,
        extra_headers={SESSION: "cut"},
    )
    assert time.monotonic() - t0 < 30  # a 400-token answer was not run to its end first
    assert r.model_extra["localsym"]["mode"] == "continue"
    msgs = server.messages("cut")
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    stopped = msgs[1]["content"]
    assert stopped.startswith("".join(got)) and len(stopped) < 120  # stopped a few tokens after the client left

    # the client may send the stopped turn back as far as it got it: still the same conversation
    back = ask + [
        {"role": "assistant", "content": "".join(got)},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": r.choices[0].message.content},
        {"role": "user", "content": "Bye."},
    ]
    r2 = client.chat.completions.create(model=MODEL, messages=back, max_tokens=2, extra_headers={SESSION: "cut"})
    assert r2.model_extra["localsym"]["mode"] == "incremental"


COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"  # a raw prompt SmolLM2 goes on counting from, to max_tokens


def test_queue_full_is_503_with_retry_after(server):
    """--queue 1: one request runs on a session, one waits, the next is refused."""
    h = {SESSION: "queue"}
    results: list[int] = []

    def waiting() -> int:
        rows = httpx.get(f"{server.url}/localsym/sessions").json()["sessions"]
        return next((r["waiting"] for r in rows if r["name"] == "queue"), 0)

    with (
        httpx.Client(timeout=120) as c,
        c.stream(
            "POST",
            f"{server.url}/v1/completions",
            headers=h,
            json={"model": MODEL, "prompt": COUNTING, "max_tokens": 400, "temperature": 0, "stream": True},
        ) as running,
    ):
        lines = running.iter_lines()  # kept: a dropped iterator closes the connection, which stops the turn
        next(lines)
        waiter = threading.Thread(
            target=lambda: results.append(
                httpx.post(
                    f"{server.url}/api/chat",
                    headers=h,
                    timeout=120,
                    json={
                        "model": MODEL,
                        "stream": False,
                        "messages": [{"role": "user", "content": "hi"}],
                        "options": {"num_predict": 1},
                    },
                ).status_code
            )
        )
        waiter.start()
        deadline = time.monotonic() + 30
        while waiting() < 1 and time.monotonic() < deadline:
            time.sleep(0.1)
        refused = httpx.post(
            f"{server.url}/api/chat",
            headers=h,
            timeout=30,
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]},
        )
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "busy" in refused.json()["error"]
    waiter.join(60)
    assert results == [200]


@pytest.fixture(scope="module")
def auth_server(server_home) -> Iterator[Server]:
    s = Server(server_home, "--api-key", "s3cret", "--session-from-user")
    yield s
    s.stop()


def test_api_key(auth_server):
    url = auth_server.url
    with pytest.raises(openai.AuthenticationError):
        auth_server.oa(api_key="wrong").models.list()
    r = httpx.post(f"{url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{url}/api/tags").json() == {"error": r.json()["error"]["message"]}
    assert [m.id for m in auth_server.oa(api_key="s3cret").models.list().data] == [MODEL]
    assert httpx.get(f"{url}/api/tags", headers={"x-api-key": "s3cret"}).status_code == 200
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=url).list()
    assert e.value.status_code == 401
    assert ollama.Client(host=url, headers={"Authorization": "Bearer s3cret"}).list().models
    r = auth_server.oa(api_key="s3cret").chat.completions.create(  # --session-from-user: `user` names it
        model=MODEL, max_tokens=2, temperature=0, user="by-user", messages=[{"role": "user", "content": "Hi"}]
    )
    assert r.model_extra["localsym"]["session"] == "by-user"


def test_refuses_other_hosts_without_a_key(server_home):
    env = dict(os.environ, LOCALSYM_HOME=str(server_home))
    env.pop("LOCALSYM_API_KEY", None)
    r = subprocess.run(
        [sys.executable, "-m", "localsym", "serve", "--host", "0.0.0.0", "--port", str(_free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and "--api-key" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_bad_json_is_400_in_each_shape(server):
    for path in ("/v1/chat/completions", "/v1/completions", "/localsym/load"):
        r = httpx.post(server.url + path, content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        assert "JSON" in r.json()["error"]["message"]
    for path in ("/api/chat", "/api/generate"):
        r = httpx.post(server.url + path, content=b"\xff\xfe[", headers={"content-type": "application/json"})
        assert r.status_code == 400 and isinstance(r.json()["error"], str)
    r = httpx.post(
        server.url + "/api/chat",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "options": {"temperature": "hot"}},
    )
    assert r.status_code == 400 and "temperature" in r.json()["error"]


def test_load_only_under_the_roots(server, root):
    def load(path: str, **kw) -> httpx.Response:
        return httpx.post(f"{server.url}/localsym/load", json={"path": path, "session": "proj", **kw}, timeout=120)

    for outside in ("/etc", str(root / "escape" / "hostname"), str(root / ".." / "serve")):
        r = load(outside)
        assert r.status_code == 403 and r.json()["error"]["code"] == "path_not_allowed", outside
    assert load("pkg").status_code == 400  # relative
    r = load(str(root / "pkg"))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    assert events[-1]["files"] == 1 and events[-1]["tokens"] > 0
    again = load(str(root / "pkg"), stream=False).json()
    assert again["files"] == 1 and again["computed_blocks"] == 0  # unchanged: nothing recomputed
    r = server.oa().chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is RETRY_DELAY_S?"}],
        max_tokens=4,
        temperature=0,
        extra_headers={SESSION: "proj"},
    )
    info = r.model_extra["localsym"]  # what served the answer, as `ask --json` says it
    assert [(x["path"].endswith("retry.py"), x["lines"], x["signal"]) for x in info["sources"]] == [
        (True, [1, 1], "needle")
    ]
    assert info["warnings"] == []


def test_keep_alive_zero_closes_idle_sessions_and_they_reopen(server):
    """Ollama's unload (an empty request with keep_alive 0) frees every idle session's context;
    the sessions stay on disk and the next request on one opens it with its history."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "stream": False}
    r = httpx.post(f"{server.url}/api/chat", json=chat | {"options": {"num_predict": 2}}, headers={SESSION: "ka"})
    assert (
        r.status_code == 200 and "ka" in httpx.get(f"{server.url}/api/ps").json()["models"][0]["localsym"]["sessions"]
    )
    r = httpx.post(f"{server.url}/api/generate", json={"model": MODEL, "keep_alive": 0})
    assert r.json()["done_reason"] == "unload"
    assert httpx.get(f"{server.url}/api/ps").json()["models"] == []
    assert len(server.messages("ka")) == 2  # nothing of it lost
    r = httpx.post(f"{server.url}/api/chat", json=chat | {"options": {"num_predict": 2}}, headers={SESSION: "ka"})
    assert r.status_code == 200 and len(server.messages("ka")) == 4


def test_routes_not_served_say_not_supported(server):
    """An API route localsym does not serve is a 501 in that API's error shape (a client stops
    asking); a path no API has is a 404."""
    r = httpx.post(f"{server.url}/v1/moderations", json={"model": MODEL, "input": "hi"})
    assert r.status_code == 501 and "not supported" in r.json()["error"]["message"]
    r = httpx.post(f"{server.url}/api/create", json={"model": "mine", "from": MODEL})
    assert r.status_code == 501 and "not supported" in r.json()["error"]
    assert httpx.get(f"{server.url}/v1/images/generations").status_code == 501
    assert httpx.get(f"{server.url}/v2/nothing").status_code == 404


def test_web_pages_cannot_drive_it(server, auth_server):
    """A page on another site (text/plain POSTs need no preflight) or behind DNS rebinding
    (a foreign Host) is refused; a local web UI gets CORS."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        content=json.dumps(chat),
        headers={"Origin": "https://evil.example", "Content-Type": "text/plain"},
    )
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    r = httpx.get(f"{server.url}/localsym/sessions", headers={"Host": "rebound.example:11435"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "host_not_allowed"
    pre = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"},
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == "http://localhost:3000"
    r = httpx.get(f"{server.url}/v1/models", headers={"Origin": "http://127.0.0.1:8080"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    # with a key, the key is what protects: any origin that has it may call
    r = httpx.get(f"{auth_server.url}/v1/models", headers={"Origin": "https://ui.example", "x-api-key": "s3cret"})
    assert r.status_code == 200


def test_body_too_large_is_413(server):
    big = b'{"messages": "' + b"x" * (9 * 2**20) + b'"}'
    r = httpx.post(f"{server.url}/v1/chat/completions", content=big, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(f"{server.url}/api/chat", content=big, timeout=60)
    assert r.status_code == 413 and "larger than" in r.json()["error"]
    # chunked (no Content-Length): refused once past the limit
    r = httpx.post(
        f"{server.url}/v1/chat/completions", content=iter([big[i : i + 2**20] for i in range(0, len(big), 2**20)])
    )
    assert r.status_code == 413
    # a client that writes the whole body before reading (http.client, as curl does) reads
    # the 413, not a connection reset (uvicorn reads a refused body's rest: measured up to
    # 100 MiB, 5 of 5 each, so no drain of our own)
    for _ in range(3):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body=big, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413 and b"request_too_large" in resp.read()
        conn.close()


def test_serve_without_the_extra_says_so_in_one_line(monkeypatch):
    import importlib.util

    from localsym.errors import LocalsymError
    from localsym.server import serve

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(LocalsymError, match=r"pip install 'localsym\[serve\]'"):
        serve(None)
