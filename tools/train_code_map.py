"""Fit the semantic signal's code map (``localsym/memory/code_map.npz``) from installed packages.

A question in words is English; a block of code is identifiers and punctuation. Averaged
static word vectors of the two sit apart even when they mean the same thing, so a linear
map W (256 x 256) is learned that moves a code block's vector toward the vectors of the
sentences that describe it. Training pairs are made the way ``localsym bench code`` makes
its task, from other packages: each package's files with their docstrings removed, cut
into blocks by localsym's own chunker, paired with the first sentence of the docstring of a
function the block holds. The bench's packages (and localsym) are never used. The loss is
the symmetric in-batch contrastive one (InfoNCE, temperature 0.05), Adam, from W = I.

Run (minutes on 2 cores; the corpus is whatever is installed, recorded in the file's
``meta``; its blocks are cut in SmolLM2's tokens, so pull it first):

    localsym pull smollm2-135m
    python tools/train_code_map.py            # this venv's packages and the standard library
    python tools/train_code_map.py --sites DIR1,DIR2 --out /tmp/map.npz

The shipped map came from this venv plus a second site-packages folder (151 packages, 12,227
pairs, held-out MRR 0.448 -> 0.573); a larger per-package budget (17K pairs) did no better on
``bench code`` (docs/DEVELOPMENT.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import sysconfig
import time
from pathlib import Path

import numpy as np

from localsym.bench.code import prepare
from localsym.chunking import chunk_file
from localsym.memory import semantic
from localsym.session import Tokenizer, models

# the bench's candidates (bench code asks about two of them) and what is no library's code
EXCLUDE = {"click", "jinja2", "rich", "starlette", "textual", "localsym", "test", "tests", "idlelib", "lib2to3"}
OUT = Path(__file__).resolve().parent.parent / "localsym" / "memory" / "code_map.npz"


def packages(sites: list[Path]) -> list[str]:
    names = {p.name for s in sites if s.is_dir() for p in s.iterdir() if (p / "__init__.py").is_file()}
    return sorted(n for n in names if n not in EXCLUDE and not n.startswith("_") and n.isidentifier())


def pairs(names: list[str], dest: Path, budget: int, model: str) -> tuple[list[str], list[str], dict[str, int]]:
    docs, blocks, used = [], [], {}
    with Tokenizer(str(models.resolve(model))) as vocab:
        for pkg in names:
            try:
                if importlib.util.find_spec(pkg) is None:
                    continue
                root, targets = prepare(pkg, dest, budget, lambda s: len(vocab.tokenize(s)))
            except (Exception, SystemExit) as e:  # noqa: BLE001 - a package that will not import or parse
                print(f"skip {pkg}: {type(e).__name__}", file=sys.stderr)
                continue
            by_file: dict[str, list] = {}
            for t in targets:
                by_file.setdefault(t.path, []).append(t)
            for path, ts in by_file.items():
                text = Path(path).read_text(encoding="utf-8")
                chunks = chunk_file(text, str(Path(path).relative_to(root.resolve())), vocab.tokenize, 256)
                lines = [c.lines or (0, 0) for c in chunks]
                for t in ts:
                    lo, hi = t.lines
                    best = max(range(len(chunks)), key=lambda i: min(lines[i][1], hi) - max(lines[i][0], lo))
                    docs.append(semantic.question_text(t.sentence))
                    blocks.append(vocab.detokenize(list(chunks[best].tokens)))
            if targets:
                used[pkg] = len(targets)
    return docs, blocks, used


def _softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(1, keepdims=True)


def mrr(q: np.ndarray, c: np.ndarray, w: np.ndarray) -> float:
    p = c @ w
    p /= np.linalg.norm(p, axis=1, keepdims=True) + 1e-9
    s = q @ p.T
    ranks = (s > np.diag(s)[:, None]).sum(1)
    return float(np.mean(1.0 / (1 + ranks)))


def fit(q: np.ndarray, c: np.ndarray, epochs: int, tau: float, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = np.eye(q.shape[1], dtype=np.float32)
    m, v = np.zeros_like(w), np.zeros_like(w)
    step = 0
    idx = np.arange(len(q))
    for _ in range(epochs):
        rng.shuffle(idx)
        for a in range(0, len(idx) - batch + 1, batch):
            part = idx[a : a + batch]
            cb, qb = c[part], q[part]
            p = cb @ w
            norm = np.linalg.norm(p, axis=1, keepdims=True) + 1e-9
            ph = p / norm
            logits = qb @ ph.T / tau
            eye = np.eye(len(part))
            g = (_softmax(logits) - eye) / len(part) + ((_softmax(logits.T) - eye) / len(part)).T
            dph = g.T @ qb / tau
            dp = (dph - ph * (dph * ph).sum(1, keepdims=True)) / norm
            grad = cb.T @ dp
            step += 1
            m = 0.9 * m + 0.1 * grad
            v = 0.999 * v + 0.001 * grad * grad
            w -= 1e-3 * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return w


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sites", default="", help="folders of packages, comma-separated (default: this venv's)")
    ap.add_argument("--stdlib", action=argparse.BooleanOptionalAction, default=True, help="the standard library too")
    ap.add_argument("--budget", type=int, default=400_000, help="tokens read per package")
    ap.add_argument("--model", default="smollm2-135m", help="whose tokenizer cuts the blocks")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--work", default="/tmp/localsym-code-map", help="where the stripped copies go")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    sites = [Path(s) for s in a.sites.split(",") if s] or [Path(sysconfig.get_paths()["purelib"])]
    if a.stdlib:
        sites.append(Path(sysconfig.get_paths()["stdlib"]))
    for s in sites[1:]:
        if str(s) not in sys.path:
            sys.path.append(str(s))  # importable, behind this environment's own packages
    t0 = time.time()
    docs, blocks, used = pairs(packages(sites), Path(a.work), a.budget, a.model)
    q = semantic.vectors(docs)
    c = semantic.vectors(blocks)
    if q is None or c is None:
        print("the semantic signal is off (wordllama missing)", file=sys.stderr)
        return 1
    q, c = q.astype(np.float32), c.astype(np.float32)
    ok = (np.abs(q).sum(1) > 0) & (np.abs(c).sum(1) > 0)
    q, c = q[ok], c[ok]
    order = np.random.default_rng(0).permutation(len(q))
    held, train = order[:2000], order[2000:]
    w = fit(q[train], c[train], a.epochs, 0.05, 1024, 0)
    before, after = mrr(q[held], c[held], np.eye(q.shape[1], dtype=np.float32)), mrr(q[held], c[held], w)
    # the shipped map is fitted on every pair, once the held-out figure is known
    w = fit(q, c, a.epochs, 0.05, 1024, 0)
    meta = {
        "version": semantic.CODE_MAP_VERSION,
        "pairs": len(q),
        "packages": used,
        "heldout_mrr_identity": round(before, 4),
        "heldout_mrr_map": round(after, 4),
        "epochs": a.epochs,
        "tau": 0.05,
        "embedding": semantic.WEIGHTS_FILE,
    }
    np.savez_compressed(a.out, w=w.astype(np.float16), meta=np.array(json.dumps(meta)))
    print(json.dumps({k: v for k, v in meta.items() if k != "packages"} | {"packages": len(used)}))
    took = time.time() - t0
    print(f"{a.out}: {len(q)} pairs from {len(used)} packages, held-out MRR {before:.3f} -> {after:.3f}, {took:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
