"""`localsym bench ...`: each benchmark measures its baseline in the same run and prints
JSON (``--json``) or a table."""

from __future__ import annotations

import argparse
import builtins
import contextlib
import importlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

VRAM_HELP = "VRAM budget as for `run` (default: auto, the GPU when there is one)"
BENCHES = (
    "speed",
    "quant",
    "memory",
    "ingest",
    "retrieval",
    "passkey",
    "experts",
    "needle",
    "attention",
    "serve",
    "ruler",
    "open",
    "code",
    "soak",
    "docs",
)


def add_parsers(parser: argparse.ArgumentParser, add_runtime_flags: Callable) -> None:
    sub = parser.add_subparsers(dest="bench", required=True, parser_class=type(parser))
    s = sub.add_parser("speed", help="prefill/decode tok/s: localsym vs llama-cpp-python's Llama")
    s.add_argument("--model", default=None, help="model (default: the catalog's default)")
    s.add_argument("--prompt-tokens", type=int, default=384)
    s.add_argument("--gen-tokens", type=int, default=64)
    s.add_argument("--reps", type=int, default=3)
    _common(s)
    add_runtime_flags(s)

    _add_memory(sub)
    _add_code(sub)
    _add_docs(sub)
    _add_ruler(sub)
    _add_open(sub)

    s = sub.add_parser("soak", help="a real server under hostile requests from 8 clients: alive, sessions intact")
    s.add_argument("--model", default=None)
    s.add_argument("--requests", type=int, default=1000)
    s.add_argument("--clients", type=int, default=8)
    s.add_argument("--ctx", type=int, default=2048, help="the server's -c")
    s.add_argument("--vram", default=None, help="VRAM budget for the server (default: cpu)")
    s.add_argument("--seed", type=int, default=0)
    _common(s)

    s = sub.add_parser("ingest", help="ingest through the memory layer vs plain prefill; seal/restore MB/s")
    s.add_argument("--model", default=None, help="a model, a GGUF path, or synthetic:7b / synthetic:1.5b")
    s.add_argument("--tokens", type=int, default=8192, help="stdlib source tokens to ingest")
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--hot", type=int, default=4096, help="hot context tokens")
    s.add_argument("--warm-mb", type=float, default=256)
    s.add_argument("--reps", type=int, default=3)
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("-ngl", "--n-gpu-layers", type=int, default=None, dest="n_gpu_layers")
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)

    s = sub.add_parser("passkey", help="passkey retrieval far past the native context, vs plain llama-cpp-python")
    s.add_argument("--model", default=None)
    s.add_argument("--tokens", type=int, default=32768)
    s.add_argument("--trials", type=int, default=10)
    s.add_argument("--baseline-trials", type=int, default=5)
    s.add_argument("--page", type=int, default=1024, help="tokens per haystack page (document)")
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--hot", type=int, default=4096)
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)

    s = sub.add_parser(
        "needle", help="needle grid over real code (lengths x depths), heatmap, vs plain llama-cpp-python"
    )
    s.add_argument("--model", default="gemma3-270m")
    s.add_argument("--lengths", type=lambda v: [int(x) for x in v.split(",")], default=[8192, 16384, 32768, 65536])
    s.add_argument("--depths", type=lambda v: [float(x) for x in v.split(",")], default=[0.1, 0.3, 0.5, 0.7, 0.9])
    s.add_argument("--baseline-trials", type=int, default=5)
    s.add_argument("--page", type=int, default=1024)
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--hot", type=int, default=4096)
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--heatmap", default="needle-heatmap.png")
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)

    s = sub.add_parser("experts", help="MoE expert prediction: hit rates vs LRU/frequency/oracle/co-firing")
    s.add_argument("--model", default=None, help="a MoE GGUF to record (default: a tiny one built here)")
    s.add_argument("--tokens", type=int, default=4000, help="synthetic trace length")
    s.add_argument("--layers", type=int, default=16)
    s.add_argument("--experts", type=int, default=64)
    s.add_argument("--used", type=int, default=4)
    s.add_argument("--decode", type=int, default=128, help="tokens decoded when recording")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    _common(s)

    s = sub.add_parser(
        "attention", help="attention-native block scoring vs the sketch: rank of a snippet's source block"
    )
    s.add_argument("--model", default=None)
    s.add_argument("--tokens", type=int, default=27000, help="stdlib tokens ingested")
    s.add_argument("--block", type=int, default=128)
    s.add_argument("--queries", type=int, default=40)
    s.add_argument("--snippet", type=int, default=24, help="tokens per question snippet")
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    _common(s)

    s = sub.add_parser("retrieval", help="block selection latency and recall at ~1M tokens")
    s.add_argument("--blocks", type=int, default=8000)
    s.add_argument("--block-tokens", type=int, default=128)
    s.add_argument("--queries", type=int, default=200)
    s.add_argument("-k", type=int, default=8)
    s.add_argument("--seed", type=int, default=0)
    _common(s)

    s = sub.add_parser("quant", help="KV formats: bytes, perplexity, kernel GB/s vs memcpy")
    s.add_argument("--model", default=None)
    s.add_argument("--context", type=int, default=1024, help="tokens whose KV is quantized")
    s.add_argument("--follow", type=int, default=256, help="tokens whose perplexity is measured")
    s.add_argument("--block", type=int, default=128, help="tokens per block")
    s.add_argument("--windows", type=int, default=4, help="disjoint stretches of text measured and pooled")
    s.add_argument("--k-threshold", type=float, default=None, help="adaptive K threshold (default: the policy's)")
    s.add_argument("--v-threshold", type=float, default=None, help="adaptive V threshold (default: the policy's)")
    s.add_argument("--sweep", default=None, help="more adaptive K/V threshold pairs in the same run: 1.5/0.25,2/0.3")
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)

    s = sub.add_parser("serve", help="`localsym serve`: TTFT of a resent conversation's k-th turn vs llama-cpp-python")
    s.add_argument("--model", default=None)
    s.add_argument("--turns", type=int, default=10, help="turns of the resent conversation")
    s.add_argument("--turn-tokens", type=int, default=256, help="tokens of code pasted per turn")
    s.add_argument("--gen", type=int, default=16, help="tokens generated per answer")
    s.add_argument("--clients", type=int, default=4, help="concurrent clients (each its own session); 0: skip")
    s.add_argument("--requests", type=int, default=3, help="requests per concurrent client")
    s.add_argument("--decode-tokens", type=int, default=64, help="tokens each client decodes for the batching figure")
    s.add_argument("--baseline-ctx", type=int, default=32768, help="the largest context given llama-cpp-python")
    s.add_argument("--sessions", type=int, default=4, help="RSS with 1 vs this many sessions open; 0: skip")
    s.add_argument(
        "--parallel", "-np", type=int, default=1, help="serve's --parallel (sessions resident in one shared context)"
    )
    _common(s)
    add_runtime_flags(s)


def _add_memory(sub) -> None:
    s = sub.add_parser("memory", help="RSS vs context length, restore vs recompute, reload")
    s.add_argument("--model", default=None)
    s.add_argument("--max-tokens", type=int, default=32768, help="largest context (4K, 8K, 16K, 32K)")
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--warm-mb", type=float, default=32, help="warm tier budget (full by 4K tokens)")
    s.add_argument("--hot", type=int, default=4096, help="hot context tokens")
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)


def _add_code(sub) -> None:
    s = sub.add_parser("code", help="questions in words over a real package's code vs BM25 over line windows")
    s.add_argument("--model", default=None, help="model (default: the catalog's default)")
    s.add_argument("--packages", default="click,jinja2", help="installed packages to ask about, comma-separated")
    s.add_argument("--tokens", type=int, default=40000, help="tokens of each package loaded (files in path order)")
    s.add_argument("--questions", type=int, default=20, help="functions asked about per package")
    s.add_argument("--window", type=int, default=30, help="lines per BM25 baseline window")
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--hot", type=int, default=4096, help="hot context tokens")
    # SmolLM2 restates the question before naming the function ("The function in this code
    # that adds a --yes option ... is `help_"): at 24 tokens 6 of click's 20 answers were
    # cut before or inside the name, which no user sees
    s.add_argument("--answer-tokens", type=int, default=64, help="tokens of each answer (a sentence and a name)")
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)


def _add_docs(sub) -> None:
    s = sub.add_parser("docs", help="questions in words over real PDF/HTML manuals vs BM25 per page; PDF pages/s")
    s.add_argument("--model", default=None, help="model (default: the catalog's default)")
    s.add_argument("--pdf", default=None, help="a PDF manual (default: one of 50+ pages found on this machine)")
    s.add_argument("--docs", default=None, help="other documents, comma-separated (default: an HTML manual here)")
    s.add_argument("--tokens", type=int, default=32000, help="tokens loaded in all (the PDF's first pages fill it)")
    s.add_argument("--questions", type=int, default=20, help="cloze questions drawn (written: all that apply)")
    s.add_argument(
        "--kind",
        choices=("asked", "cloze"),
        default="asked",
        help="asked: questions written for the default manuals (cloze where too few apply); cloze: drawn from the text",
    )
    s.add_argument("--window", type=int, default=300, help="words per BM25 baseline passage")
    s.add_argument("--reps", type=int, default=3, help="extraction runs (median)")
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--hot", type=int, default=4096, help="hot context tokens")
    s.add_argument("--answer-tokens", type=int, default=32, help="tokens of each answer (a sentence)")
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)


def _add_ruler(sub) -> None:
    s = sub.add_parser("ruler", help="RULER's synthetic tasks over stdlib text, 1x-16x native, vs the raw model")
    s.add_argument("--model", default=None, help="model (default: the catalog's default)")
    s.add_argument("--tasks", default="niah_single,niah_multikey,niah_multivalue,niah_multiquery,vt,cwe")
    s.add_argument("--lengths", default="1x,4x,16x", help="multiples of the native context (4x) or tokens (8192, 32k)")
    s.add_argument("--trials", type=int, default=5, help="trials per task and length")
    s.add_argument("--baseline-trials", type=int, default=None, help="raw-model trials per task (default: --trials)")
    s.add_argument("--page", type=int, default=1024, help="tokens per haystack page (document)")
    s.add_argument("--block", type=int, default=256)
    s.add_argument("--hot", type=int, default=4096, help="hot context tokens")
    s.add_argument("--warm-mb", type=float, default=256)
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--heatmap", default="ruler-heatmap.png", help="PNG: tasks x (raw 1x, lengths); '' for none")
    s.add_argument("-t", "--threads", type=int, default=None)
    _common(s)


def _add_open(sub) -> None:
    s = sub.add_parser("open", help="seconds to open a session and to its first token, 10K to 1M tokens")
    s.add_argument("--model", default=None)
    s.add_argument("--sizes", type=lambda v: [int(x) for x in v.split(",")], default=[10000, 100000, 1000000])
    s.add_argument("--ctx", type=int, default=4096, help="hot context tokens")
    s.add_argument("--reps", type=int, default=3, help="fresh processes per size (median)")
    s.add_argument("--max-tokens", type=int, default=32, help="answer tokens (checks the key is found)")
    s.add_argument("--vram", default=None, help=VRAM_HELP)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--child", default=None, help=argparse.SUPPRESS)
    _common(s)


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--json", action="store_true", help="print the result as JSON")
    s.add_argument("--out", default=None, help="also write the JSON to this file")


def emit(result: dict[str, Any], args: argparse.Namespace, table: Callable[[dict], str]) -> None:
    if args.out:
        with builtins.open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    if args.json:
        print(json.dumps(result))
    else:
        print(table(result))
    sys.stdout.flush()


def main(args: argparse.Namespace) -> int:
    if args.bench not in BENCHES:
        raise SystemExit(f"unknown bench {args.bench}")
    module = importlib.import_module(f"localsym.bench.{args.bench}")  # loaded only when asked for
    return module.run(args)


@contextlib.contextmanager
def private_home(prefix: str) -> Iterator[str]:
    """A throwaway LOCALSYM_HOME, so a benchmark's first run pays for its own blocks."""
    home = tempfile.mkdtemp(prefix=prefix)
    old = os.environ.get("LOCALSYM_HOME")
    os.environ["LOCALSYM_HOME"] = home
    try:
        yield home
    finally:
        if old is None:
            os.environ.pop("LOCALSYM_HOME", None)
        else:
            os.environ["LOCALSYM_HOME"] = old
        shutil.rmtree(home, ignore_errors=True)
