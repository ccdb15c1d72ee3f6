"""`localsym serve` under a resent conversation, as OpenAI clients send it: time to first
token of the k-th turn against plain llama-cpp-python (`Llama.create_chat_completion` with
its own prompt cache, `LlamaRAMCache`) given the same requests in the same run; then
requests/s with concurrent clients, each on its own session.

Each turn pastes a fresh chunk of stdlib source (``--turn-tokens``) and asks about it; the
whole conversation so far is resent every turn. localsym answers from the session (only the
new message is prefilled; earlier turns come back from its tiers), llama-cpp-python from
its KV cache and prompt cache (the shared prefix is kept, the new message prefilled) while
the conversation fits its context.

Then the decode rate of ``--clients`` clients at once (aggregate tokens/s, each on its own
session, ``--decode-tokens`` each) against one client alone, beside llama.cpp's own batch
ceiling on this machine (one decode step of 1 row vs N rows).

First (``--sessions N``, 4 by default) it reports the process RSS with one session open and
with N sessions open on the same model, each having answered one request: what each further
session costs (with ``--parallel 0`` its own context; before #27 also its own copy of the
weights; with ``--parallel P`` the sessions share one context holding P working sets).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from localsym.bench import emit, private_home
from localsym.bench.corpus import stdlib_text

QUESTION = "In one sentence, what does this code do?"


def _threads(n: int | None) -> int:
    return n or max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _turn_texts(model: str, turns: int, per_turn: int) -> list[str]:
    """``turns`` user messages, each a distinct chunk of ~``per_turn`` tokens of real code."""
    from localsym.session import Tokenizer

    with Tokenizer(model) as tok:
        ids = tok.tokenize(stdlib_text(per_turn * turns * 6))
        return [
            f"Here is part {k + 1} of the code:\n```python\n{tok.detokenize(ids[k * per_turn : (k + 1) * per_turn])}"
            f"\n```\n{QUESTION}"
            for k in range(turns)
        ]


class _Server:
    """`localsym serve` in this process (uvicorn in a thread), on a free local port."""

    def __init__(self, settings) -> None:
        import uvicorn

        from localsym.server.app import build_app
        from localsym.server.state import ServerState

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            settings.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{settings.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(
                build_app(ServerState.create(settings)), host="127.0.0.1", port=settings.port, log_level="warning"
            )
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)


def _ask(client, url: str, session: str, messages: list[dict], gen: int) -> dict[str, Any]:
    """One streamed chat request: the answer, the time to its first token, what localsym did."""
    body = {"messages": messages, "max_tokens": gen, "temperature": 0, "stream": True}
    t0 = time.perf_counter()
    ttft, text, info = None, [], {}
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers={"X-Localsym-Session": session}) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"server answered {r.status_code}: {r.text}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "localsym" in chunk:
                info = chunk["localsym"]
            for c in chunk.get("choices", []):
                piece = c.get("delta", {}).get("content")
                if piece:
                    ttft = ttft if ttft is not None else time.perf_counter() - t0
                    text.append(piece)
    seconds = time.perf_counter() - t0
    return {"text": "".join(text), "ttft_s": ttft if ttft is not None else seconds, "seconds": seconds, "info": info}


class _Baseline:
    """Plain llama-cpp-python given the same requests: ``create_chat_completion`` with its
    KV cache and prompt cache (``LlamaRAMCache``), one model, one context of ``n_ctx``."""

    def __init__(self, path, n_ctx: int, threads: int) -> None:
        from llama_cpp import Llama, LlamaRAMCache

        self.llm: Any = Llama(
            model_path=str(path),
            n_ctx=n_ctx,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            flash_attn=True,
            verbose=False,
        )
        self.llm.set_cache(LlamaRAMCache(capacity_bytes=2 << 30))

    def ttft(self, messages: list[dict], gen: int) -> float | None:
        """Seconds to the first token; None when the conversation no longer fits its context."""
        t0 = time.perf_counter()
        try:
            stream: Any = self.llm.create_chat_completion(
                cast(Any, messages), max_tokens=gen, temperature=0.0, top_k=1, stream=True
            )
            ttft = None
            for chunk in stream:
                if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    ttft = time.perf_counter() - t0
        except ValueError as e:  # "Requested tokens exceed context window"
            print(f"  llama-cpp-python: {e}", file=sys.stderr)
            return None
        return ttft if ttft is not None else time.perf_counter() - t0

    def close(self) -> None:
        if self.llm is not None:
            self.llm.close()
            self.llm = None


def _concurrent(url: str, clients: int, per_client: int, gen: int) -> dict[str, Any]:
    """``clients`` clients at once, each on its own session, each resending its own short
    conversation ``per_client`` times."""
    import httpx

    def client(i: int) -> list[float]:
        convo: list[dict] = []
        times = []
        with httpx.Client(timeout=600) as c:
            for j in range(per_client):
                convo.append({"role": "user", "content": f"Client {i}, question {j}: name a prime number."})
                r = _ask(c, url, f"client-{i}", convo, gen)
                convo.append({"role": "assistant", "content": r["text"]})
                times.append(r["seconds"])
        return times

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        lat = [t for ts in pool.map(client, range(clients)) for t in ts]
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "requests": len(lat),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 3),
        "latency_p50_s": round(statistics.median(lat), 3),
        "latency_max_s": round(max(lat), 3),
    }


# a prompt SmolLM2 answers at length: 128 of 128 tokens (a short story, or counting, ends after
# 5-25 tokens and says nothing about decode speed)
STORY = "Write a long essay about the history of the sea, with many details."  # each client its own session


def _decode_rate(url: str, clients: int, gen: int) -> dict[str, Any]:
    """Aggregate decode tokens/s of ``clients`` clients asking at once, each on its own
    session (opened by a short request first), from the first client's first token to the
    last client's last: with ``--parallel`` >= clients their steps share batches."""
    import httpx

    sessions = [f"decode-{clients}-{i}" for i in range(clients)]
    with httpx.Client(timeout=600) as c:
        for name in sessions:
            _ask(c, url, name, [{"role": "user", "content": "Say hello."}], 4)

    def client(i: int) -> tuple[float, float, int]:
        with httpx.Client(timeout=600) as c:
            t0 = time.perf_counter()
            r = _ask(c, url, sessions[i], [{"role": "user", "content": STORY}], gen)
        n = int(r["info"].get("completion_tokens") or len(r["text"].split()))
        return t0 + r["ttft_s"], t0 + r["seconds"], n

    with ThreadPoolExecutor(clients) as pool:
        got = list(pool.map(client, range(clients)))
    first, last = min(g[0] for g in got), max(g[1] for g in got)
    tokens = sum(max(g[2] - 1, 0) for g in got)  # a first token is the prefill's
    return {
        "clients": clients,
        "tokens": tokens,
        "seconds": round(last - first, 3),
        "tok_s": round(tokens / (last - first), 1),
    }


def _raw_batch_ceiling(path, opts, rows: int, reps: int = 30) -> dict[str, Any]:
    """llama.cpp alone on this machine: one decode step of 1 row vs ``rows`` rows of
    different sequences (what batching can give here at most; on 2 CPU cores far less than
    on a GPU, where a step's cost hardly grows with its rows)."""
    from dataclasses import replace

    from localsym.runtime.engine import Engine

    with Engine(path, replace(opts, parallel=0, n_seq_max=rows, n_ctx=1024)) as eng:
        ctx = eng.ctx
        for s in range(rows):
            ctx.decode(list(range(100, 164)), 0, s, logits="none")
        pos = [64] * rows
        rate = {}
        for n in (1, rows):
            t0 = time.perf_counter()
            for _ in range(reps):
                ctx.decode([200] * n, pos[:n], list(range(n)), [True] * n)
                for i in range(n):
                    pos[i] += 1
            rate[n] = n * reps / (time.perf_counter() - t0)
    return {
        "rows": rows,
        "tok_s_1": round(rate[1], 1),
        "tok_s_n": round(rate[rows], 1),
        "ratio": round(rate[rows] / rate[1], 2),
    }


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / (1 << 20)


def _sessions_rss(url: str, n: int, gen: int) -> dict[str, Any]:
    """Process RSS (this process runs the server) with 1, then ``n`` sessions open, each
    having answered one short request (so its weights and KV cache are touched)."""
    import gc

    import httpx

    rss: list[float] = []
    with httpx.Client(timeout=600) as c:
        for i in range(n):
            _ask(c, url, f"rss-{i}", [{"role": "user", "content": f"Session {i}: name a colour."}], gen)
            gc.collect()
            rss.append(round(_rss_mb(), 1))
            print(f"  {i + 1} session(s) open: RSS {rss[-1]:.0f} MiB", file=sys.stderr)
    return {
        "sessions": n,
        "rss_mib": rss,
        "rss_1_mib": rss[0],
        "rss_n_mib": rss[-1],
        "ratio": round(rss[-1] / rss[0], 3),
        "per_extra_session_mib": round((rss[-1] - rss[0]) / max(n - 1, 1), 1),
    }


def run(args: argparse.Namespace) -> int:
    import httpx

    from localsym.flags import run_options
    from localsym.server.settings import ServerSettings
    from localsym.session import default_model, models

    name = args.model or default_model()
    path = models.resolve(name)
    opts = run_options(args)
    opts.parallel = args.parallel
    opts.n_threads = _threads(opts.n_threads)
    if opts.n_ctx is None:
        opts.n_ctx = 4096
    texts = _turn_texts(str(path), args.turns, args.turn_tokens)
    ttft: list[float] = []
    base: list[float | None] = []
    info: list[dict] = []
    convo: list[dict] = []
    base_ctx = min(max(2048, (args.turns * (args.turn_tokens + args.gen + 64) + 1023) // 512 * 512), args.baseline_ctx)
    t_start = time.perf_counter()
    with private_home("localsym-bench-serve-"):  # the first turn pays for its blocks
        srv = _Server(
            ServerSettings(model=str(path), opts=opts, max_sessions=max(4, args.clients, args.sessions), queue=8)
        )
        baseline = None
        try:
            # before llama-cpp-python's copy of the model is loaded into this process
            rss = _sessions_rss(srv.url, args.sessions, args.gen) if args.sessions else None
            baseline = bl = _Baseline(path, base_ctx, opts.n_threads)
            with httpx.Client(timeout=1800) as c:
                # turn by turn, localsym then llama-cpp-python on the same messages (localsym's
                # answers become the history both are sent): drift in machine speed hits both alike
                for k, text in enumerate(texts):
                    convo.append({"role": "user", "content": text})
                    r = _ask(c, srv.url, "bench", convo, args.gen)
                    base.append(bl.ttft(convo, args.gen))
                    convo.append({"role": "assistant", "content": r["text"]})
                    ttft.append(round(r["ttft_s"], 3))
                    info.append(r["info"])
                    b = f"{base[-1]:.2f}s" if base[-1] is not None else "n/a (past its context)"
                    print(
                        f"  turn {k + 1}: localsym ttft {r['ttft_s']:.2f}s (prefilled {info[-1].get('prompt_tokens')}"
                        f" of {info[-1].get('total_tokens')} tokens), llama-cpp-python {b}",
                        file=sys.stderr,
                    )
            bl.close()
            conc = _concurrent(srv.url, args.clients, args.requests, args.gen) if args.clients else None
            batching = None
            if args.clients > 1:
                one = _decode_rate(srv.url, 1, args.decode_tokens)
                many = _decode_rate(srv.url, args.clients, args.decode_tokens)
                batching = {
                    "one": one,
                    "many": many,
                    "ratio": round(many["tok_s"] / one["tok_s"], 2),
                    "llama_cpp_ceiling": _raw_batch_ceiling(path, opts, args.clients),
                }
        finally:
            if baseline is not None:
                baseline.close()
            srv.close()
    conversation_tokens = info[-1].get("total_tokens", 0) if info else 0
    result = {
        "model": name,
        "turns": args.turns,
        "turn_tokens": args.turn_tokens,
        "gen_tokens": args.gen,
        "threads": opts.n_threads,
        "n_ctx": opts.n_ctx,
        "parallel": opts.parallel,
        "baseline_n_ctx": base_ctx,
        "conversation_tokens": conversation_tokens,
        "ttft_s": ttft,
        "baseline_ttft_s": [round(b, 3) if b is not None else None for b in base],
        "prefilled_tokens": [i.get("prompt_tokens") for i in info],
        "restored_blocks": [i.get("restored_blocks") for i in info],
        "modes": [i.get("mode") for i in info],
        "concurrent": conc,
        "batching": batching,
        "sessions_rss": rss,
        "seconds": round(time.perf_counter() - t_start, 1),
    }

    def table(r: dict) -> str:
        rows = [
            f"bench serve: {r['model']}, {r['turns']} turns of ~{r['turn_tokens']} tokens resent "
            f"(conversation {r['conversation_tokens']} tokens), {r['threads']} threads",
            f"  {'turn':>4} {'localsym ttft':>14} {'llama-cpp-python ttft':>22} {'prefilled':>10}",
        ]
        for k, (a, b, p) in enumerate(zip(r["ttft_s"], r["baseline_ttft_s"], r["prefilled_tokens"])):
            rows.append(f"  {k + 1:>4} {a:>13.2f}s {(f'{b:.2f}s' if b is not None else 'n/a'):>22} {p:>10}")
        if r["sessions_rss"]:
            sr = r["sessions_rss"]
            rows.append(
                f"  RSS with 1 session open {sr['rss_1_mib']:.0f} MiB, with {sr['sessions']} "
                + (f"(--parallel {r['parallel']}) " if r.get("parallel") else "(a context each) ")
                + f"{sr['rss_n_mib']:.0f} MiB ({sr['ratio']}x; +{sr['per_extra_session_mib']} MiB per session)"
            )
        if r.get("batching"):
            b = r["batching"]
            c = b["llama_cpp_ceiling"]
            rows.append(
                f"  decode: 1 client {b['one']['tok_s']} tok/s, {b['many']['clients']} at once {b['many']['tok_s']} "
                f"tok/s ({b['ratio']}x; --parallel {r['parallel']}); llama.cpp alone here: 1 row {c['tok_s_1']}, "
                f"{c['rows']} rows {c['tok_s_n']} tok/s ({c['ratio']}x)"
            )
        if r["concurrent"]:
            cc = r["concurrent"]
            rows.append(
                f"  {cc['clients']} clients on {cc['clients']} sessions: {cc['requests_per_s']} requests/s "
                f"({cc['requests']} requests, p50 {cc['latency_p50_s']}s)"
            )
        return "\n".join(rows)

    emit(result, args, table)
    return 0
