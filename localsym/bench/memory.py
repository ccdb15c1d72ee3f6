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

from localsym.bench import emit
from localsym.bench.corpus import stdlib_files

LENGTHS = (4096, 8192, 16384, 32768)
REPS = 5  # decode speed: the median of this many answers, memory layer on and plain in turns


def _docs(model: str, n_tokens: int) -> list[tuple[str, str]]:
    """Whole stdlib files, in a fixed order, until about ``n_tokens`` tokens."""
    from localsym.session import Tokenizer

    out, n = [], 0
    with Tokenizer(model) as vocab:
        for p in stdlib_files():
            text = p.read_text(encoding="utf-8", errors="replace")
            toks = vocab.tokenize(text)
            if n + len(toks) > n_tokens:
                out.append((str(p), vocab.detokenize(toks[: n_tokens - n])))
                break
            out.append((str(p), text))
            n += len(toks)
    return out


def child(args: argparse.Namespace) -> None:
    """One length: ingest, then measure; prints one JSON line."""
    from localsym.session import RunOptions, Session, SessionConfig

    cfg = SessionConfig(block_tokens=args.block, warm_mb=args.warm_mb, cold_gb=50)
    opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads)
    out: dict = {"tokens": args.child}
    with Session.open(f"bench-{args.child}-{args.tag}", args.model_path, opts, cfg) as s:
        t0 = time.perf_counter()
        rep = None
        for source, text in _docs(args.model_path, args.child):
            rep = s.ingest_text(text, source, "file", report=rep)
        out["load_s"] = time.perf_counter() - t0
        assert rep is not None  # _docs yields at least one document
        out["computed_blocks"], out["reused_blocks"] = rep.computed_blocks, rep.reused_blocks
        st = s.status()
        out["warm_bytes"], out["cold_bytes"], out["device"] = st.warm_bytes, st.cold_bytes, st.device
        if args.measure:
            out.update(s.measure_blocks())
            out.update(_decode_rates(s, args))
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def _decode_rates(s, args: argparse.Namespace) -> dict:
    """Decode tok/s answering through the session vs the plain runtime after a prompt as
    long as the session's working set, in one process and taking turns (this machine's
    decode speed drifts by ~10% over minutes), the median of each."""
    from localsym.session import GenParams, OneShot, RunOptions, Tokenizer

    docs = "".join(t for _, t in _docs(args.model_path, args.child))
    with Tokenizer(args.model_path) as vocab:
        text = vocab.tokenize(docs)
        mem, plain = [], []
        answer, hot = "", 0
        for _ in range(REPS):
            with s.ask("Which module defines the function dedent?", GenParams(max_tokens=48)) as turn:
                answer = turn.text()
            mem.append(turn.stats.decode_tok_s)
            hot = turn.stats.hot_tokens
            prompt = vocab.detokenize(text[: max(min(hot - 64, args.hot - 64), 16)])
            with OneShot(
                args.model_path,
                prompt,
                RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads),
                GenParams(max_tokens=48),
                raw=True,
            ) as run:
                for _ in run:
                    pass
            plain.append(run.stats.decode_tok_s)
    return {
        "memory_decode_tok_s": statistics.median(mem),
        "plain_decode_tok_s": statistics.median(plain),
        "ask_hot_tokens": hot,
        "answer": answer,
    }


def _run_child(home: str, argv: list[str]) -> dict:
    env = dict(os.environ, LOCALSYM_HOME=home)
    r = subprocess.run([sys.executable, "-m", "localsym.bench.memory", *argv], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        from localsym.errors import LocalsymError

        raise LocalsymError(f"bench memory child failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _beyond_warm(row: dict) -> float:
    return row["rss_mb"] - row["warm_bytes"] / (1 << 20)


def run(args: argparse.Namespace) -> int:
    from localsym.session import default_model, models

    model_path = str(models.resolve(args.model or default_model()))
    lengths = [n for n in LENGTHS if n <= args.max_tokens]
    common = [
        "--model-path",
        model_path,
        "--block",
        str(args.block),
        "--warm-mb",
        str(args.warm_mb),
        "--hot",
        str(args.hot),
        "--vram",
        args.vram or "auto",
    ]
    common += ["--threads", str(args.threads)] if args.threads else []
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
        "model": args.model or default_model(),
        "block_tokens": args.block,
        "warm_mb": args.warm_mb,
        "hot_ctx": args.hot,
        "device": m["device"],
        "rss_mb": {str(n): round(r["rss_mb"], 1) for n, r in rows.items()},
        "rss_ratio_32k_over_4k": round(rows[top]["rss_mb"] / rows[lengths[0]]["rss_mb"], 3),
        # the same with the warm tier's bytes taken out: at 4K the tier is not yet at its budget,
        # so the plain ratio rises as blocks get smaller; this one is what grows besides it
        "rss_ratio_beyond_warm": round(_beyond_warm(rows[top]) / _beyond_warm(rows[lengths[0]]), 3),
        # after the longest first load: the warm tier at its budget, every block in cold
        "warm_bytes": rows[top]["warm_bytes"],
        "cold_bytes": rows[top]["cold_bytes"],
        "restore_warm_ms": round(m["restore_warm_ms"], 2),
        "restore_cold_ms": round(m["restore_cold_ms"], 2),
        "recompute_ms": round(m["recompute_ms"], 1),
        "warm_speedup": round(m["recompute_ms"] / m["restore_warm_ms"], 1),
        "cold_speedup": round(m["recompute_ms"] / m["restore_cold_ms"], 1),
        "decode_tok_s_memory": round(m["memory_decode_tok_s"], 2),
        "decode_tok_s_plain": round(m["plain_decode_tok_s"], 2),
        "decode_ratio": (
            round(m["memory_decode_tok_s"] / m["plain_decode_tok_s"], 3) if m["plain_decode_tok_s"] else None
        ),
        "first_load_s": round(first_load, 2),
        "reload_s": round(m["load_s"], 3),
        "reload_speedup": round(first_load / max(m["load_s"], 1e-6), 1),
        "reload_computed_blocks": m["computed_blocks"],
    }

    def table(r: dict) -> str:
        lines = [
            f"bench memory: {r['model']}, {r['block_tokens']}-token blocks, warm {r['warm_mb']} MB, hot {r['hot_ctx']}"
        ]
        lines += [f"  {n:>6} tokens  peak RSS {mb:8.1f} MB" for n, mb in r["rss_mb"].items()]
        lines += [
            f"  RSS ratio {list(r['rss_mb'])[-1]} / {list(r['rss_mb'])[0]}: {r['rss_ratio_32k_over_4k']} "
            f"({r['rss_ratio_beyond_warm']} without the warm tier's bytes)",
            f"  one block: warm restore {r['restore_warm_ms']} ms, cold restore {r['restore_cold_ms']} ms, "
            f"recompute {r['recompute_ms']} ms -> x{r['warm_speedup']} / x{r['cold_speedup']}",
            f"  decode tok/s: memory {r['decode_tok_s_memory']} vs plain {r['decode_tok_s_plain']} "
            f"(ratio {r['decode_ratio']})",
            f"  load {r['first_load_s']} s, reload {r['reload_s']} s: x{r['reload_speedup']}",
        ]
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
    p.add_argument("--vram", default=None)
    p.add_argument("--measure", action="store_true")
    child(p.parse_args())


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("localsym.llama").setLevel(logging.CRITICAL)
    _main()
