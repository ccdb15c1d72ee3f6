"""What agents and editors trip on (#27 items 5 and 6), through a real `localsym serve` on
SmolLM2 with the real `openai` and `ollama` clients: usage with cached prompt tokens (streamed
with ``stream_options.include_usage``), the context a session offers in /v1/models and
/api/show, raw prompts' special tokens, CORS for editor webviews, and ``--queue N`` letting
exactly N requests wait."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from conftest import module_home
from test_server import MODEL, SESSION, Server

QUEUE = 2


@pytest.fixture(scope="module")
def home(tmp_path_factory, smol_path) -> Iterator[Path]:
    with module_home(tmp_path_factory, "agents") as h:
        yield h


@pytest.fixture(scope="module")
def server(home) -> Iterator[Server]:
    s = Server(home, "--queue", str(QUEUE), "--max-sessions", "2")
    yield s
    s.stop()


# -- --queue N: one request runs, exactly N wait -----------------------------------------------------
def test_a_burst_on_one_session_gets_exactly_queue_waiting(server):
    """QUEUE + 2 requests at once on an idle session: one runs, QUEUE wait (all answered),
    one is refused. Counting the request about to take the session as waiting refused one
    more (a burst that arrives before the first one holds the session)."""

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as c:
            body = {"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 12, "temperature": 0}
            rs = await asyncio.gather(
                *(
                    c.post(f"{server.url}/v1/completions", json=body, headers={SESSION: "burst"})
                    for _ in range(QUEUE + 2)
                )
            )
            return sorted(r.status_code for r in rs)

    assert asyncio.run(burst()) == [200] * (QUEUE + 1) + [503]


def test_queue_counts_waiters_while_one_runs(server):
    """With one request running, QUEUE more wait and the next is refused at once."""
    statuses: list[int] = []
    h = {SESSION: "held"}

    def waiting() -> int:
        rows = httpx.get(f"{server.url}/localsym/sessions").json()["sessions"]
        return next((r["waiting"] for r in rows if r["name"] == "held"), 0)

    with (
        httpx.Client(timeout=120) as c,
        c.stream(
            "POST",
            f"{server.url}/v1/completions",
            headers=h,
            json={"model": MODEL, "prompt": "1, 2, 3, 4,", "max_tokens": 300, "temperature": 0, "stream": True},
        ) as running,
    ):
        lines = running.iter_lines()
        next(lines)
        body = {"model": MODEL, "prompt": "a, b, c,", "max_tokens": 1}
        waiters = [
            threading.Thread(
                target=lambda: statuses.append(
                    httpx.post(f"{server.url}/v1/completions", json=body, headers=h, timeout=120).status_code
                )
            )
            for _ in range(QUEUE)
        ]
        for t in waiters:
            t.start()
        deadline = time.monotonic() + 30
        while waiting() < QUEUE and time.monotonic() < deadline:
            time.sleep(0.05)
        refused = httpx.post(f"{server.url}/v1/completions", json=body, headers=h, timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"]
    for t in waiters:
        t.join(60)
    assert statuses == [200] * QUEUE


# -- CORS for editor webviews and desktop apps ---------------------------------------------------------
WEBVIEW = "vscode-webview://1c2f3a4b5d6e7f80"


def test_editor_webviews_get_cors_with_the_sdk_headers(server):
    """A VS Code webview (Continue, Cline) or an Electron/Tauri app may call a local server: its
    preflight allows every header the openai SDK sends (x-stainless-*), and the answer carries
    CORS. Web pages of other sites (and ``null``, a sandboxed iframe's origin) stay refused."""
    sent: list[httpx.Request] = []
    http = httpx.Client(event_hooks={"request": [sent.append]}, timeout=120)
    client = openai.OpenAI(
        base_url=f"{server.url}/v1",
        api_key="unused",
        max_retries=0,
        http_client=http,
        default_headers={"Origin": WEBVIEW},
    )
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1
    )
    assert raw.headers["access-control-allow-origin"] == WEBVIEW
    asked = sorted(
        {k.lower() for k in sent[0].headers} - {"host", "origin", "content-length", "connection", "accept-encoding"}
    )
    assert any(h.startswith("x-stainless-") for h in asked), asked

    pre = httpx.options(
        f"{server.url}/v1/chat/completions",
        headers={
            "Origin": WEBVIEW,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ", ".join([*asked, "x-stainless-some-future-header"]),
        },
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == WEBVIEW
    allowed = {h.strip() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert set(asked) | {"x-stainless-some-future-header"} <= allowed
    assert "POST" in pre.headers["access-control-allow-methods"]

    for origin in ("app://obsidian.md", "tauri://localhost", "vscode-file://vscode-app"):
        r = httpx.get(f"{server.url}/api/tags", headers={"Origin": origin})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    for origin in ("null", "https://evil.example", "vscode-webview.evil.example", "http://app.evil.example"):
        r = httpx.options(
            f"{server.url}/v1/chat/completions", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
        )
        assert r.status_code == 403 and "access-control-allow-origin" not in r.headers, origin


# -- raw prompts are the client's own template ---------------------------------------------------------
CHATML = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_raw_prompts_parse_special_tokens_chat_content_does_not(server, smol_path):
    """/v1/completions and Ollama's ``raw: true`` send the client's own template: its special
    tokens are control tokens (``<|im_start|>`` is one token on SmolLM2), where the same text
    in a chat message stays text (several tokens)."""
    from localsym.runtime.bridge import Model

    vocab = Model(smol_path, vocab_only=True)
    try:
        special = vocab.tokenize(CHATML, parse_special=True)
        plain = vocab.tokenize(CHATML)
        (im_start,) = vocab.tokenize("<|im_start|>", parse_special=True)
    finally:
        vocab.close()
    assert special.count(im_start) == 2 and im_start not in plain and len(plain) > len(special)

    r = server.oa().completions.create(model=MODEL, prompt=CHATML, max_tokens=8, temperature=0)
    assert r.model_extra["localsym"]["prompt_tokens"] == len(special)
    assert "Paris" in r.choices[0].text  # it answers as the template asks, not continuing a transcript

    g = httpx.post(
        f"{server.url}/api/generate",
        json={
            "model": MODEL,
            "prompt": CHATML,
            "raw": True,
            "stream": False,
            "options": {"temperature": 0, "num_predict": 8},
        },
        timeout=120,
    ).json()
    assert g["localsym"]["prompt_tokens"] == len(special) and g["response"] == r.choices[0].text

    c = server.oa().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": CHATML}], max_tokens=1, temperature=0
    )
    framing = server.oa().chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=1, temperature=0
    )
    text_tokens = c.model_extra["localsym"]["prompt_tokens"] - framing.model_extra["localsym"]["prompt_tokens"] + 1
    assert text_tokens == len(plain)  # the message's text, tokenized as text


# -- the context a session offers --------------------------------------------------------------------
def test_models_and_show_say_the_context_a_session_offers(server):
    """/v1/models (``context_length``, vLLM's ``max_model_len``) and /api/show (``num_ctx``,
    ``<arch>.context_length``) give the hot context a session really has: -c tokens."""
    client = server.oa()
    (m,) = client.models.list().data
    assert m.model_extra["context_length"] == m.model_extra["max_model_len"] == 2048
    assert client.models.retrieve(MODEL).model_extra["context_length"] == 2048
    shown = ollama.Client(host=server.url).show(MODEL)
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.parameters is not None and shown.parameters.split() == ["num_ctx", "2048"]
    client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=1, extra_headers={SESSION: "ctx"}
    )
    assert httpx.get(f"{server.url}/localsym/sessions/ctx").json()["hot_capacity"] == 2048


# -- usage: the whole prompt, and the part localsym's memory held ----------------------------------
SYSTEM = "You help a team that writes compilers. Answer in one short sentence, and never guess names."


def test_usage_counts_the_whole_prompt_and_what_memory_held(server, smol_engine):
    """``usage.prompt_tokens`` is the whole prompt the answer came from (the chat template's
    render of the conversation); ``prompt_tokens_details.cached_tokens`` the part the session
    held, so that only the new message was prefilled. Streamed with ``include_usage``: every
    chunk has ``usage: null`` but an extra last one with empty ``choices`` (OpenAI's shape).
    Ollama gives the same counts as ``prompt_eval_count`` and ``prompt_eval_cached_count``."""
    client = server.oa()
    h = {SESSION: "usage"}
    convo = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "My name is Ada and I write compilers. Reply with OK."},
    ]
    first = client.chat.completions.create(model=MODEL, messages=convo, max_tokens=6, temperature=0, extra_headers=h)
    assert first.usage is not None and first.usage.prompt_tokens_details is not None
    assert abs(first.usage.prompt_tokens - len(smol_engine.chat_tokens(convo))) <= 2
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # a new session: all of it prefilled now

    convo += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "What is my name?"},
    ]
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=convo,
            max_tokens=6,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=h,
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and all(c.usage is None for c in chunks[:-1])
    u = last.usage
    assert u.prompt_tokens_details is not None
    assert abs(u.prompt_tokens - len(smol_engine.chat_tokens(convo))) <= 2  # the whole conversation
    info = chunks[-2].model_extra["localsym"]
    assert info["mode"] == "incremental"
    # the system prompt and the first exchange came from memory: only the new message was prefilled
    assert u.prompt_tokens - u.prompt_tokens_details.cached_tokens == info["prompt_tokens"] < 20
    assert u.completion_tokens == info["completion_tokens"] and u.total_tokens == u.prompt_tokens + u.completion_tokens
    answer = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    convo += [{"role": "assistant", "content": answer}, {"role": "user", "content": "And my job?"}]
    r = httpx.post(
        f"{server.url}/api/chat",
        headers=h,
        json={"model": MODEL, "messages": convo, "stream": False, "options": {"num_predict": 4, "temperature": 0}},
        timeout=120,
    ).json()
    assert abs(r["prompt_eval_count"] - len(smol_engine.chat_tokens(convo))) <= 3
    assert r["prompt_eval_count"] - r["prompt_eval_cached_count"] == r["localsym"]["prompt_tokens"] < 20

    # a raw completion in a throwaway session: everything prefilled, nothing cached
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="def add(a, b):", max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[-1].choices == [] and all(c.usage is None for c in chunks[:-1])
    done = chunks[-1].usage
    assert done is not None and done.prompt_tokens_details is not None
    assert (
        done.prompt_tokens_details.cached_tokens == 0
        and done.prompt_tokens > chunks[-2].model_extra["localsym"]["prompt_tokens"]
    )
