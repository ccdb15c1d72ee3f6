"""Memory tiers: flat RSS as the context grows, restore vs recompute, decode with the
memory layer on vs plain, and reloading an unchanged tree.

Each context length runs in a fresh process (peak RSS is per process) over one temporary
LOCALSYM_HOME, so the lengths share the block cache: 8K reuses the 4K blocks, and so on.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from localsym.bench import emit
from localsym.bench.corpus import stdlib_files

LENGTHS = (4096, 8192, 16384, 32768)
REPS = 5  # decode speed: the median of this many answers, memory layer on and plain in turns


def _docs(model_path: str, n_tokens: int) -> list[tuple[str, str]]:
    """Whole stdlib files, in a fixed order, until about ``n_tokens`` tokens."""
    from localsym.runtime.bridge import Model

    vocab = Model(model_path, vocab_only=True)
    out, n = [], 0
    for p in stdlib_files():
        text = p.read_text(encoding="utf-8", errors="replace")
        toks = vocab.tokenize(text)
        if n + len(toks) > n_tokens:
            cut = vocab.detokenize(toks[: n_tokens - n])
            out.append((str(p), cut))
            break
        out.append((str(p), text))
        n += len(toks)
    vocab.close()
    return out


def child(args: argparse.Namespace) -> None:
    """One length: ingest, then measure; prints one JSON line."""
    from localsym.runtime.engine import RunOptions
    from localsym.session import Session, SessionConfig

    cfg = SessionConfig(block_tokens=args.block, warm_mb=args.warm_mb, cold_gb=50)
    opts = RunOptions(n_ctx=args.hot, vram="cpu", n_threads=args.threads)
    out: dict = {"tokens": args.child}
    with Session.open(f"bench-{args.child}-{args.tag}", args.model_path, opts, cfg) as s:
        t0 = time.perf_counter()
        rep = None
        for source, text in _docs(args.model_path, args.child):
            rep = s.ingest_text(text, source, "file", report=rep)
        out["load_s"] = time.perf_counter() - t0
        out["computed_blocks"], out["reused_blocks"] = rep.computed_blocks, rep.reused_blocks
        usage = s.memory_usage()
        out["warm_bytes"], out["cold_bytes"] = usage["warm_bytes"], usage["cold_bytes"]
        if args.measure:
            out.update(_restore_timings(s))
            out.update(_decode_rates(s, args))
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def _restore_timings(s) -> dict:
    """One full-size block: restore from warm, from cold, and recompute it, median of 5."""
    row = next(b for b in s.docs if b.n_tokens == s.config.block_tokens)
    eb_warm = s._fetch(row)

    def timed(fn) -> float:
        ts = []
        for _ in range(5):
            s.hot.truncate(1)
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1000)
        s.hot.truncate(1)
        return statistics.median(ts)

    warm = timed(lambda: s.hot.restore(row.key, eb_warm.to_blob(row.pos0, 1), row.pos0, row.n_tokens))

    def cold() -> None:
        eb, _ = s.cold.get(row.key)
        s.hot.restore(row.key, eb.to_blob(row.pos0, 1), row.pos0, row.n_tokens)

    cold_ms = timed(cold)
    recompute = timed(lambda: s.hot.decode(row.key, row.tokens.tolist()))
    return {"restore_warm_ms": warm, "restore_cold_ms": cold_ms, "recompute_ms": recompute}


def _decode_rates(s, args: argparse.Namespace) -> dict:
    """Decode tok/s answering through the session vs the plain runtime after a prompt as
    long as the session's working set, in one process and taking turns (this machine's
    decode speed drifts by ~10% over minutes), the median of each."""
    from localsym.runtime.engine import Engine, GenParams, GenStats, RunOptions

    docs = "".join(t for _, t in _docs(args.model_path, args.child))
    mem, plain = [], []
    with Engine(args.model_path, RunOptions(n_ctx=args.hot, vram="cpu", n_threads=args.threads)) as eng:
        text = eng.tokenize_prompt(docs)
        for _ in range(REPS):
            answer = "".join(s.ask("Which module defines the function dedent?", GenParams(max_tokens=48)))
            mem.append(s.last.decode_tok_s)
            toks = text[: max(min(s.last.hot_tokens - 64, args.hot - 64), 16)]
            eng.ctx.clear()
            stats = GenStats()
            for _ in eng.generate(toks, 0, GenParams(max_tokens=48), stats=stats):
                pass
            plain.append(stats.decode_tok_s)
    return {"memory_decode_tok_s": statistics.median(mem), "plain_decode_tok_s": statistics.median(plain),
            "ask_hot_tokens": s.last.hot_tokens, "answer": answer}


def _run_child(home: str, argv: list[str]) -> dict:
    env = dict(os.environ, LOCALSYM_HOME=home)
    r = subprocess.run([sys.executable, "-m", "localsym.bench.memory", *argv], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        from localsym.errors import LocalsymError

        raise LocalsymError(f"bench memory child failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> int:
    from localsym import model_store
    from localsym.catalog import default_model

    model_path = str(model_store.resolve(args.model or default_model()))
    lengths = [n for n in LENGTHS if n <= args.max_tokens]
    common = ["--model-path", model_path, "--block", str(args.block), "--warm-mb", str(args.warm_mb),
              "--hot", str(args.hot)] + (["--threads", str(args.threads)] if args.threads else [])
    rows = {}
    with tempfile.TemporaryDirectory(prefix="localsym-bench-memory-") as home:
        for n in lengths:  # ingest only: these processes' peak RSS is what grows with context
            rows[n] = _run_child(home, ["--child", str(n), "--tag", "a", *common])
            print(f"  {n} tokens: rss {rows[n]['rss_mb']:.0f} MB, load {rows[n]['load_s']:.1f}s", file=sys.stderr)
        top = lengths[-1]
        # the same tree again in a new session: every block comes from the shared cache
        m = _run_child(home, ["--child", str(top), "--tag", "b", "--measure", *common])
        first_load = sum(rows[n]["load_s"] for n in lengths)  # every block computed exactly once
    result = {
        "model": args.model or default_model(), "block_tokens": args.block, "warm_mb": args.warm_mb,
        "hot_ctx": args.hot,
        "rss_mb": {str(n): round(r["rss_mb"], 1) for n, r in rows.items()},
        "rss_ratio_32k_over_4k": round(rows[top]["rss_mb"] / rows[lengths[0]]["rss_mb"], 3),
        # after the longest first load: the warm tier at its budget, every block in cold
        "warm_bytes": rows[top]["warm_bytes"], "cold_bytes": rows[top]["cold_bytes"],
        "restore_warm_ms": round(m["restore_warm_ms"], 2), "restore_cold_ms": round(m["restore_cold_ms"], 2),
        "recompute_ms": round(m["recompute_ms"], 1),
        "warm_speedup": round(m["recompute_ms"] / m["restore_warm_ms"], 1),
        "cold_speedup": round(m["recompute_ms"] / m["restore_cold_ms"], 1),
        "decode_tok_s_memory": round(m["memory_decode_tok_s"], 2), "decode_tok_s_plain": round(m["plain_decode_tok_s"], 2),
        "decode_ratio": round(m["memory_decode_tok_s"] / m["plain_decode_tok_s"], 3) if m["plain_decode_tok_s"] else None,
        "first_load_s": round(first_load, 2), "reload_s": round(m["load_s"], 3),
        "reload_speedup": round(first_load / max(m["load_s"], 1e-6), 1),
        "reload_computed_blocks": m["computed_blocks"],
    }

    def table(r: dict) -> str:
        lines = [f"bench memory: {r['model']}, {r['block_tokens']}-token blocks, warm {r['warm_mb']} MB, hot {r['hot_ctx']}"]
        lines += [f"  {n:>6} tokens  peak RSS {mb:8.1f} MB" for n, mb in r["rss_mb"].items()]
        lines += [f"  RSS ratio {list(r['rss_mb'])[-1]} / {list(r['rss_mb'])[0]}: {r['rss_ratio_32k_over_4k']}",
                  f"  one block: warm restore {r['restore_warm_ms']} ms, cold restore {r['restore_cold_ms']} ms, "
                  f"recompute {r['recompute_ms']} ms -> x{r['warm_speedup']} / x{r['cold_speedup']}",
                  f"  decode tok/s: memory {r['decode_tok_s_memory']} vs plain {r['decode_tok_s_plain']} "
                  f"(ratio {r['decode_ratio']})",
                  f"  load {r['first_load_s']} s, reload {r['reload_s']} s: x{r['reload_speedup']}"]
        return "\n".join(lines)

    emit(result, args, table)
    return 0


def _main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--child", type=int, required=True)
    p.add_argument("--tag", default="a")
    p.add_argument("--model-path", required=True)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--warm-mb", type=float, default=32)
    p.add_argument("--hot", type=int, default=4096)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--measure", action="store_true")
    child(p.parse_args())


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("localsym.llama").setLevel(logging.CRITICAL)
    _main()
