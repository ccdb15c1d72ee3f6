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
import pytest
from conftest import SMOL, register_cached
from test_server import MODEL, SESSION, Server

QUEUE = 2


@pytest.fixture(scope="module")
def home(tmp_path_factory, smol_path) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("agents") / "home"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOCALSYM_HOME", str(home))
        register_cached(SMOL)
        yield home


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
