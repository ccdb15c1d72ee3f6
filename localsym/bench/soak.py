"""`localsym bench soak`: a real `localsym serve` (its own process, loopback) under hostile
requests from several clients at once, mixed with good ones: bodies nested past any bound,
lone surrogates in values and keys, bad session names on every route that takes one,
bodies past the size limit, bad parameters, bodies that are not JSON, unknown routes and
methods. Every hostile request must get a 4xx; good ones a 200 (or a 503 while the
queue is full, which is the server's bound doing its work). Afterwards the server must be
alive, answer a good request, hold every session it held before unchanged, and its log must
hold no traceback.

The baseline is the same server's answers before the soak: the sessions' sizes and
messages, read again after it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from localsym.bench import emit, private_home

SESSION = "X-Localsym-Session"
CHAT_ROUTES = ("/v1/chat/completions", "/v1/completions", "/api/chat", "/api/generate")
POST_ROUTES = (*CHAT_ROUTES, "/api/show", "/localsym/load")
BAD_NAMES = ("a b", "-x", "x" * 65, "a\x00b", "été", "a~b", ".hidden", "../etc", "a/b", "\u202e")
URL_BAD_NAMES = ("a%20b", "-x", "x" * 65, "a%00b", "%C3%A9t%C3%A9", "%ED%A0%80", "a~b", ".hidden", "..%2Fetc")


def _body(path: str, model: str, content: Any = "Hi", **extra: Any) -> dict[str, Any]:
    """A request body of the route's API with one user message (or prompt)."""
    if path in ("/v1/completions", "/api/generate"):
        body: dict[str, Any] = {"model": model, "prompt": content}
    elif path == "/api/show":
        body = {"model": content if content != "Hi" else model}
    elif path == "/localsym/load":
        body = {"path": content if isinstance(content, str) else "/", "stream": False}
    else:
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
    if path.startswith("/api/") and path != "/api/show":
        body["stream"] = False
        body["options"] = {"num_predict": 2, "temperature": 0}
    elif path.startswith("/v1/"):
        body["max_tokens"] = 2
        body["temperature"] = 0
    return {**body, **extra}


def hostile_requests(model: str, rng: random.Random, max_body: int) -> list[tuple[str, str, str, bytes, dict]]:
    """Every hostile kind: (kind, method, path, body, headers). A hostile request is one the
    server must refuse with a 4xx."""
    js = {"content-type": "application/json"}
    out: list[tuple[str, str, str, bytes, dict]] = []
    for path in POST_ROUTES:
        out.append(("nested", "POST", path, b"[" * 100_000 + b"]" * 100_000, js))
        inner = json.dumps(_body(path, model)).encode()
        out.append(("nested_field", "POST", path, inner[:-1] + b', "x": ' + b"[" * 5000 + b"]" * 5000 + b"}", js))
        lone = json.dumps(_body(path, model, "hi \ud800 there"), ensure_ascii=True).encode()
        out.append(("surrogate", "POST", path, lone, js))
        out.append(("surrogate_key", "POST", path, b'{"\\udfff": 1, "model": "%s"}' % model.encode(), js))
        out.append(("not_json", "POST", path, b"{this is not json", js))
        out.append(("not_utf8", "POST", path, b'{"model": "\xff\xfe"}', js))
        out.append(("empty", "POST", path, b"", js))
        out.append(("json_array", "POST", path, b"[1, 2, 3]", js))
        out.append(("huge", "POST", path, b'{"x": "' + b"a" * (max_body + 1024) + b'"}', js))
    for path in CHAT_ROUTES:
        for name in BAD_NAMES:
            hdr = {**js, SESSION: name.encode("utf-8", "surrogateescape").decode("latin-1")}
            out.append(("bad_session_header", "POST", path, json.dumps(_body(path, model)).encode(), hdr))
        if path.startswith("/v1/"):  # what each API reads: a field foreign to it is ignored, as theirs do
            bad: list[dict[str, Any]] = [
                {"max_tokens": -5},
                {"max_tokens": "many"},
                {"temperature": "hot"},
                {"temperature": 1e309},
                {"top_p": -1},
                {"n": 3},
                {"stream": "yes"},
                {"stop": 42},
                {"seed": "x"},
            ]
        else:
            bad = [
                {"options": {"num_predict": "many"}},
                {"options": {"temperature": "hot"}},
                {"options": {"top_p": -1}},
                {"options": "fast"},
                {"options": {"stop": 42}},
                {"options": {"seed": "x"}},
                {"stream": "yes"},
            ]
        if path in ("/v1/chat/completions", "/api/chat"):
            bad += [
                {"messages": "not a list"},
                {"messages": [{"role": "wizard", "content": "hi"}]},
                {"messages": [{"role": "user", "content": {"nested": True}}]},
            ]
            if path.startswith("/v1/"):  # Ollama answers an empty conversation (it loads the model)
                bad.append({"messages": []})
        else:
            bad += [{"prompt": ["a", 1, None]}, {"prompt": 5}]
        for extra in bad:
            body = _body(path, model, **extra)
            out.append(("bad_param", "POST", path, json.dumps(body).encode(), js))
    out.append(
        (
            "bad_user_field",
            "POST",
            "/v1/chat/completions",
            json.dumps(_body(CHAT_ROUTES[0], model, user="a~b")).encode(),
            js,
        )
    )
    for name in URL_BAD_NAMES:
        out.append(("bad_session_url", "GET", f"/localsym/sessions/{name}", b"", {}))
        out.append(("bad_session_url", "DELETE", f"/localsym/sessions/{name}", b"", {}))
    out.append(
        ("bad_load_path", "POST", "/localsym/load", json.dumps({"path": "/etc/passwd", "stream": False}).encode(), js)
    )
    out.append(("bad_load_path", "POST", "/localsym/load", json.dumps({"path": 5}).encode(), js))
    out.append(("unknown_route", "GET", "/v2/nothing", b"", {}))
    out.append(("unknown_route", "POST", "/api/pull", b"{}", js))
    out.append(("bad_method", "DELETE", "/v1/chat/completions", b"", {}))
    out.append(("bad_method", "GET", "/api/chat", b"", {}))
    out.append(("unknown_model", "POST", "/api/show", json.dumps({"model": "no-such-model"}).encode(), js))
    out.append(("bad_host", "GET", "/api/version", b"", {"host": "evil.example"}))
    rng.shuffle(out)
    return out


def good_requests(model: str, sessions: list[str]) -> list[tuple[str, str, str, bytes, dict]]:
    js = {"content-type": "application/json"}
    out: list[tuple[str, str, str, bytes, dict]] = [
        ("good_get", "GET", "/api/version", b"", {}),
        ("good_get", "GET", "/v1/models", b"", {}),
        ("good_get", "GET", "/api/tags", b"", {}),
        ("good_get", "GET", "/localsym/sessions", b"", {}),
    ]
    for path in CHAT_ROUTES:
        out.append(("good_chat", "POST", path, json.dumps(_body(path, model, "Say hi.")).encode(), js))
    for s in sessions:
        out.append(("good_get", "GET", f"/localsym/sessions/{s}", b"", {}))
    return out


def _send(port: int, method: str, path: str, body: bytes, headers: dict, timeout: float) -> int | str:
    """One request on its own connection: the status, or what went wrong on the wire."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        hdrs = {"host": f"127.0.0.1:{port}", "connection": "close", **headers}
        try:
            conn.request(method, path, body=body or None, headers=hdrs)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body went out (413 by Content-Length): read the answer
        r = conn.getresponse()
        r.read()
        return r.status
    except (ConnectionError, http.client.HTTPException) as e:
        return type(e).__name__
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return type(e).__name__
    finally:
        conn.close()


def soak(
    port: int,
    model: str,
    sessions: list[str],
    requests: int = 1000,
    clients: int = 8,
    good_share: float = 0.15,
    seed: int = 0,
    max_body: int = 8 * 2**20,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """``requests`` requests from ``clients`` threads against a running server on
    ``port``: hostile ones in every kind, a ``good_share`` of good ones. Returns counts by
    kind and status and the requests that broke the rules (a hostile one not refused with a
    4xx, a good one not answered 200 or 503, a 500, a dropped connection)."""
    rng = random.Random(seed)
    hostile = hostile_requests(model, rng, max_body)
    good = good_requests(model, sessions)
    plan = []
    for i in range(requests):
        if rng.random() < good_share:
            plan.append(good[i % len(good)])
        else:
            plan.append(hostile[i % len(hostile)])
    by_kind: dict[str, Counter] = {}
    statuses: Counter = Counter()
    bad: list[dict[str, Any]] = []
    lock = threading.Lock()

    def one(req: tuple[str, str, str, bytes, dict]) -> None:
        kind, method, path, body, headers = req
        status = _send(port, method, path, body, headers, timeout)
        ok = (
            (isinstance(status, int) and (status in (200, 503) if kind.startswith("good") else 400 <= status < 500))
            # a body past the limit may be refused before it is all sent: the refusal is the point
            # (the 413 can arrive cut short too: the server closes with the body's rest unread,
            # and the reset that follows may overtake the answer's last bytes)
            or (
                kind == "huge"
                and status in ("ConnectionResetError", "BrokenPipeError", "RemoteDisconnected", "IncompleteRead")
            )
        )
        with lock:
            by_kind.setdefault(kind, Counter())[str(status)] += 1
            statuses[str(status)] += 1
            if not ok and len(bad) < 50:
                bad.append({"kind": kind, "method": method, "path": path[:80], "status": status})

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    n5 = sum(c for s, c in statuses.items() if s.isdigit() and int(s) >= 500 and s != "503")
    n4 = sum(c for s, c in statuses.items() if s.isdigit() and 400 <= int(s) < 500)
    return {
        "requests": requests,
        "clients": clients,
        "hostile": sum(1 for r in plan if not r[0].startswith("good")),
        "good": sum(1 for r in plan if r[0].startswith("good")),
        "status": dict(sorted(statuses.items())),
        "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(by_kind.items())},
        "4xx": n4,
        "5xx_not_503": n5,
        "503": statuses.get("503", 0),
        "broken": bad,
        "wall_s": round(wall, 2),
        "requests_per_s": round(requests / wall, 1) if wall > 0 else None,
    }


def session_state(port: int, names: list[str]) -> dict[str, Any]:
    """What each session holds, as the server tells it: tokens, blocks, messages."""
    out = {}
    for name in names:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request("GET", f"/localsym/sessions/{name}", headers={"connection": "close"})
            r = conn.getresponse()
            data = json.loads(r.read()) if r.status == 200 else {"status": r.status}
        finally:
            conn.close()
        out[name] = {k: data.get(k) for k in ("total_tokens", "blocks", "messages", "status")}
    return out


def good_chat(port: int, model: str, session: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        body = json.dumps(_body("/v1/chat/completions", model, "Name one color.", max_tokens=8))
        conn.request(
            "POST", "/v1/chat/completions", body=body, headers={"content-type": "application/json", SESSION: session}
        )
        r = conn.getresponse()
        data = r.read()
        text = json.loads(data)["choices"][0]["message"]["content"] if r.status == 200 else data.decode()[:200]
        return r.status, text
    finally:
        conn.close()


class ServeProcess:
    """`localsym serve` in its own process on a free loopback port; its console in a file."""

    def __init__(self, model: str, home: str, *args: str) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = Path(home) / f"serve-{self.port}.log"
        env = dict(os.environ, LOCALSYM_HOME=home)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localsym", "serve", "--model", model, "--port", str(self.port), *args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while _send(self.port, "GET", "/api/version", b"", {}, 2) != 200:
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


def served_model(port: int) -> str:
    """The name the server answers to (`GET /v1/models`)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/v1/models", headers={"connection": "close"})
        return str(json.loads(conn.getresponse().read())["data"][0]["id"])
    finally:
        conn.close()


def run_soak(
    port: int, proc: subprocess.Popen, log: Path, requests: int, clients: int, seed: int = 0
) -> dict[str, Any]:
    """Sessions made by good requests first, the soak, then the checks after it."""
    model = served_model(port)
    sessions = ["soak-notes", "soak-code"]
    for s in sessions:
        status, text = good_chat(port, model, s)
        if status != 200:
            raise RuntimeError(f"a good request before the soak failed: {status} {text}")
    before = session_state(port, sessions)
    result = soak(port, model, sessions, requests, clients, seed=seed)
    result["alive"] = proc.poll() is None
    status, text = good_chat(port, model, "soak-after") if result["alive"] else (0, "")
    result["good_after"] = {"status": status, "answer": text}
    after = session_state(port, sessions) if result["alive"] else {}
    result["sessions_intact"] = after == before and all(v.get("status") is None for v in before.values())
    result["sessions"] = after
    text_log = log.read_text(errors="replace")
    result["tracebacks_in_log"] = text_log.count("Traceback")
    result["ok"] = bool(
        result["alive"]
        and status == 200
        and result["sessions_intact"]
        and not result["broken"]
        and result["5xx_not_503"] == 0
        and result["tracebacks_in_log"] == 0
    )
    return result


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model

    name = args.model or default_model()
    path = str(model_store.resolve(name))  # resolved here: the server runs in a home of its own
    with private_home("localsym-soak-") as home:
        srv = ServeProcess(path, home, "-c", str(args.ctx), "--vram", args.vram or "cpu", "--max-sessions", "2")
        try:
            result = run_soak(srv.port, srv.proc, srv.log, args.requests, args.clients, args.seed)
        finally:
            srv.stop()
    result["model"] = name
    emit(result, args, _table)
    return 0 if result["ok"] else 1


def _table(r: dict[str, Any]) -> str:
    lines = [
        f"soak: {r['requests']} requests ({r['hostile']} hostile, {r['good']} good) from {r['clients']} clients "
        f"in {r['wall_s']} s ({r['requests_per_s']} req/s), model {r.get('model', '?')}",
        f"{'kind':<22} statuses",
    ]
    for kind, counts in r["by_kind"].items():
        lines.append(f"{kind:<22} " + ", ".join(f"{s}: {c}" for s, c in counts.items()))
    lines += [
        f"4xx {r['4xx']}, 503 (queue full) {r['503']}, other 5xx {r['5xx_not_503']}, rule breaks {len(r['broken'])}",
        f"after: server alive {r['alive']}, good request {r['good_after']['status']}, "
        f"sessions intact {r['sessions_intact']}, tracebacks in its log {r['tracebacks_in_log']}",
        "PASS" if r["ok"] else "FAIL: " + json.dumps(r["broken"][:5]),
    ]
    return "\n".join(lines)
