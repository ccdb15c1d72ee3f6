"""Ingest at the speed of the hardware: the same tokens loaded through the memory layer
(prefill, seal each block into the tiers on a worker while the next one decodes) and
prefilled plainly, in one run on one device; per-block seal and restore speed in f16
bytes per second; restore against recompute. ``--model synthetic:7b`` measures a
laptop-sized shape (random weights, a real tokenizer) built on first use."""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import threading
import time

from localsym.bench import emit, private_home
from localsym.bench.corpus import stdlib_files


class _VramPeak:
    """Peak GPU memory used while running (nvidia-smi polled), or None without a GPU."""

    def __init__(self) -> None:
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True) if shutil.which("nvidia-smi") else None

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                ).stdout
                mb = max(float(v) for v in out.split())
                self.peak = mb if self.peak is None else max(self.peak, mb)
            except (OSError, ValueError, subprocess.SubprocessError):
                return
            self._stop.wait(0.2)

    def __enter__(self) -> _VramPeak:
        if self._thread is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def _model(spec: str | None) -> str:
    """A catalog name, a path, or ``synthetic:SHAPE`` (built once into the cache dir)."""
    from localsym import paths
    from localsym.bench import synthetic_model as sm
    from localsym.session import default_model, models

    shape = sm.parse_spec(spec) if spec else None
    if shape is None:  # a path: the bench runs in a private home, where names are not registered
        return str(models.resolve(spec or default_model()))
    assert spec is not None  # parse_spec found a shape in it
    path = paths.ensure(paths.cache_dir() / "synthetic") / f"{spec.split(':', 1)[1]}.gguf"
    return str(sm.ensure(path, models.resolve(default_model()), **shape))


def run(args: argparse.Namespace) -> int:
    from localsym.session import PlainModel, RunOptions, Session, SessionConfig, default_model

    model = _model(args.model)
    opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads, n_gpu_layers=args.n_gpu_layers)
    with PlainModel(model, opts) as plain:
        docs, n = [], 0
        for p in stdlib_files():
            text = p.read_text(encoding="utf-8", errors="replace")
            docs.append((str(p), text, plain.tokenize(f"### {p}\n{text.rstrip()}\n")))
            n += len(docs[-1][2])
            if n >= args.tokens:
                break
        window = SessionConfig().ingest_window
        plain.prefill(docs[0][2][:64], window, args.block)  # warm-up: first graph build, weights paged in
        # the same decode calls as ingest (a block at a time after a sliding window of the
        # document), without the memory layer: its cost is what the ratio shows
        raw_s = [sum(plain.prefill(t, window, args.block) for _, _, t in docs) for _ in range(args.reps)]
    with private_home("localsym-bench-ingest-"), _VramPeak() as vram:
        cfg = SessionConfig(block_tokens=args.block, warm_mb=args.warm_mb, cold_gb=100)
        with Session.open("ingest", model, opts, cfg) as s:
            t0 = time.perf_counter()
            rep = None
            for source, text, _ in docs:
                rep = s.ingest_text(text, source, "file", report=rep)
            ingest_s = time.perf_counter() - t0
            blocks = s.measure_blocks(reps=args.reps * 3)
            st = s.status()
    assert rep is not None
    during = statistics.median(b / sec / 1e6 for sec, b in rep.seals if sec > 0)
    raw = statistics.median(raw_s)
    result = {
        "model": args.model or default_model(),
        "device": st.device,
        "plan": st.plan,
        "tokens": rep.tokens,
        "blocks": rep.blocks,
        "block_tokens": args.block,
        "ingest_tok_s": round(rep.tokens / ingest_s, 1),
        "raw_prefill_tok_s": round(n / raw, 1),
        "ingest_ratio": round((rep.tokens / ingest_s) / (n / raw), 3),
        # the seal path alone on a real block (median), and as it ran beside ingest's decode
        "seal_mb_s": round(blocks["f16_bytes"] / blocks["seal_ms"] / 1e3, 1),
        "seal_ms": round(blocks["seal_ms"], 2),
        "seal_mb_s_during_ingest": round(during, 1),
        "restore_mb_s": round(blocks["f16_bytes"] / blocks["restore_warm_ms"] / 1e3, 1),
        "restore_ms": round(blocks["restore_warm_ms"], 2),
        "restore_cold_ms": round(blocks["restore_cold_ms"], 2),
        "recompute_ms": round(blocks["recompute_ms"], 2),
        "restore_speedup": round(blocks["recompute_ms"] / blocks["restore_warm_ms"], 1),
        "block_f16_mb": round(blocks["f16_bytes"] / 1e6, 2),
        "block_stored_mb": round(blocks["block_bytes"] / 1e6, 2),
        "vram_peak_mb": vram.peak,
    }

    def table(r: dict) -> str:
        return "\n".join(
            [
                f"bench ingest: {r['model']} on {r['device']}, {r['tokens']} tokens in {r['blocks']} blocks of "
                f"{r['block_tokens']}",
                f"  ingest {r['ingest_tok_s']} tok/s vs plain prefill {r['raw_prefill_tok_s']} tok/s: "
                f"ratio {r['ingest_ratio']}",
                f"  seal {r['seal_mb_s']} MB/s ({r['seal_ms']} ms a block of {r['block_f16_mb']} MB f16, "
                f"{r['block_stored_mb']} MB stored); {r['seal_mb_s_during_ingest']} MB/s beside ingest's decode",
                f"  restore {r['restore_mb_s']} MB/s ({r['restore_ms']} ms; from disk {r['restore_cold_ms']} ms) vs "
                f"recompute {r['recompute_ms']} ms: x{r['restore_speedup']}",
                f"  VRAM peak {r['vram_peak_mb']} MB" if r["vram_peak_mb"] is not None else "  VRAM: no GPU",
            ]
        )

    emit(result, args, table)
    return 0
