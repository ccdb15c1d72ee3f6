"""`localsym bench code`: a question in words finds the code it is about (RepoQA's "search
needle function" in spirit), against a plain BM25 over line windows in the same run.

A real package no one here wrote (from the installed environment) is copied with every
docstring removed (``ast``); files are taken in path order up to ``--tokens``. Functions
are drawn by seed among those with a docstring whose first sentence has 4+ words, a body
of 5+ lines and a name found once in the tree; the question is that first sentence:
"Which function in this code does the following: <sentence>? Answer with the function's
name." Each question is asked in the same session (no earlier turn brought along).

Reported per package and overall: source hit (a block of the working set overlaps the
function) and k (document blocks in the working set), BM25 over ``--window``-line windows of
the same files at the same k (SQLite FTS5, the same identifier-split words), random at
that k, answer hit (the name in the answer), time to first token (median, and its ratio
to a one-block question asked in the same run), load time.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import random
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsym.bench import baselines, emit, private_home

QUESTION = "Which function in this code does the following: {what}? Answer with the function's name."


@dataclass
class Target:
    name: str
    path: str  # absolute, in the stripped copy
    lines: tuple[int, int]  # of the stripped file
    sentence: str


def _first_sentence(doc: str) -> str:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    para = " ".join(para.split())
    m = re.match(r"(.+?[.!?])(\s|$)", para)
    return (m.group(1) if m else para).rstrip(".!? ")


def _strip(text: str) -> tuple[str, dict[tuple[str, int], str]] | None:
    """``text`` without docstrings, and the removed docstrings by (qualified name, def line);
    None when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return None
    lines = text.split("\n")
    drop: set[int] = set()
    put_pass: dict[int, str] = {}
    docs: dict[tuple[str, int], str] = {}
    stack: list[tuple[ast.AST, str]] = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        body = getattr(node, "body", None)
        if isinstance(body, list) and body:
            first = body[0]
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and first.end_lineno is not None
            ):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    if first.lineno == node.lineno:
                        continue  # a one-line def: leave it be
                    docs[(prefix.rstrip("."), node.lineno)] = first.value.value
                drop.update(range(first.lineno - 1, first.end_lineno))
                if len(body) == 1:
                    indent = re.match(r"\s*", lines[first.lineno - 1]).group()  # type: ignore[union-attr]
                    put_pass[first.lineno - 1] = indent + "pass"
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                stack.append((child, f"{prefix}{child.name}."))
            elif not isinstance(child, ast.expr):
                stack.append((child, prefix))
    out = []
    for i, ln in enumerate(lines):
        if i in put_pass:
            out.append(put_pass[i])
        elif i not in drop:
            out.append(ln)
    return "\n".join(out), docs


def prepare(package: str, dest: Path, budget: int, count) -> tuple[Path, list[Target]]:
    """A stripped copy of ``package`` under ``dest`` (files in path order up to ``budget``
    tokens) and every function fit to be asked about."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"bench code: package {package!r} is not installed here")
    src = Path(next(iter(spec.submodule_search_locations)))
    root = dest / package
    total = 0
    candidates: list[Target] = []
    names: Counter[str] = Counter()
    for f in sorted(src.rglob("*.py")):
        if "__pycache__" in f.parts or "tests" in f.parts:
            continue
        got = _strip(f.read_text(encoding="utf-8", errors="replace"))
        if got is None:
            continue
        text, docs = got
        n = count(text)
        if total + n > budget and total:
            continue
        total += n
        out = root / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        tree = ast.parse(text)
        stack: list[tuple[ast.AST, str]] = [(tree, "")]
        defs: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, str]] = []
        while stack:
            node, prefix = stack.pop()
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                    defs.append((f"{prefix}{child.name}", child, child.name))
                    names[child.name] += 1
                if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    stack.append((child, f"{prefix}{child.name}."))
                elif not isinstance(child, ast.expr):
                    stack.append((child, prefix))
        by_qual = {q: d for (q, _), d in docs.items()}
        for qual, node, name in defs:
            doc = by_qual.get(qual)
            if not doc or name.startswith("__"):
                continue
            sentence = _first_sentence(doc)
            end = node.end_lineno or node.lineno
            if len(sentence.split()) >= 4 and end - node.lineno >= 5 and len(sentence) <= 300:
                lo = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                candidates.append(Target(name, str(out.resolve()), (lo, end), sentence))
    return root, [t for t in candidates if names[t.name] == 1]


def _windows(root: Path, size: int) -> list[tuple[str, int, int, str]]:
    out = []
    for f in sorted(root.rglob("*.py")):
        lines = f.read_text(encoding="utf-8").split("\n")
        for a in range(0, len(lines), size):
            out.append((str(f.resolve()), a + 1, min(a + size, len(lines)), "\n".join(lines[a : a + size])))
    return out


def _bm25(windows: list[tuple[str, int, int, str]]) -> Callable[[str, int], list[int]]:
    return baselines.bm25([w[3] for w in windows])


def _overlaps(path: str, lines: tuple[int, int] | list[int] | None, t: Target) -> bool:
    return bool(lines) and path == t.path and lines[0] <= t.lines[1] and t.lines[0] <= lines[1]  # type: ignore[index]


def _package(args, name: str, pkg: str, path, opts, tmp: Path, vocab) -> dict:
    from localsym.session import GenParams, Session, SessionConfig

    root, cands = prepare(pkg, tmp, args.tokens, lambda s: len(vocab.tokenize(s)))
    rng = random.Random(args.seed)
    targets = rng.sample(cands, min(args.questions, len(cands)))
    windows = _windows(root, args.window)
    bm25 = _bm25(windows)
    cfg = SessionConfig(block_tokens=args.block, recent_tokens=0)
    rows: list[dict[str, Any]] = []
    with Session.open(f"code-{pkg}", str(path), opts, cfg) as s:
        t0 = time.perf_counter()
        rep = s.load(root)
        load_s = time.perf_counter() - t0
        docs = [(b.source, b.lines) for b in s.docs]
        sizes = {(b.source, tuple(b.lines or ())): b.n_tokens for b in s.docs}
        win_tokens = [len(vocab.tokenize(w[3])) for w in windows]
        for i, t in enumerate(targets):
            q = QUESTION.format(what=t.sentence)
            with s.ask(q, GenParams(max_tokens=args.answer_tokens)) as turn:
                answer = turn.text()
            st = turn.stats
            chosen = [x for x in st.sources if x.get("signal") != "refresh"]  # what the question chose
            k = len(chosen)
            hit = any(_overlaps(x["path"], x["lines"], t) for x in chosen)
            wins = bm25(q, max(k, 1))
            bm_hit = any(_overlaps(windows[w][0], (windows[w][1], windows[w][2]), t) for w in wins)
            # the same baseline allowed the working set's tokens instead of its count: a
            # 30-line window is ~1.6 of our definition-cut blocks
            used = sum(sizes.get((x["path"], tuple(x["lines"] or ())), 0) for x in chosen)
            by_tokens = baselines.top_within_tokens(bm25, q, k, win_tokens, used)
            bm_tok_hit = any(_overlaps(windows[w][0], (windows[w][1], windows[w][2]), t) for w in by_tokens)
            m = sum(_overlaps(p, ln, t) for p, ln in docs)
            rows.append(
                {
                    "function": t.name,
                    "file": str(Path(t.path).relative_to(root.resolve())),
                    "question": t.sentence,
                    "k": k,
                    "source_hit": hit,
                    "bm25_hit": bm_hit,
                    "bm25_tokens_hit": bm_tok_hit,
                    "bm25_tokens_windows": len(by_tokens),
                    "random_p": round(baselines.p_random(len(docs), m, k), 4),
                    "answer_hit": bool(re.search(rf"\b{re.escape(t.name)}\b", answer)),
                    "answer": answer.strip()[:120],
                    "ttft_s": round(st.ttft_s, 3),
                    "reinjected": st.reinjected_blocks,
                    "signals": dict(Counter(x.get("signal", "?") for x in st.sources)),
                    "refreshed": len(st.sources) - k,
                }
            )
            r = rows[-1]
            print(
                f"  {pkg} {i + 1}/{len(targets)} {t.name}: k={k} hit={hit} bm25={bm_hit} "
                f"answer={r['answer_hit']} ttft={st.ttft_s:.2f}s {r['answer'][:50]!r}",
                file=sys.stderr,
            )
    return {
        "package": pkg,
        "tokens": rep.tokens,
        "blocks": len(docs),
        "files": rep.files,
        "load_s": round(load_s, 1),
        "questions": rows,
        **_summary(rows),
    }


def _summary(rows: list[dict]) -> dict[str, Any]:
    n = max(len(rows), 1)
    return baselines.hit_rates(rows) | {"reinjected_mean": round(sum(r["reinjected"] for r in rows) / n, 2)}


def _one_block_ttft(path, opts, tmp: Path, block: int) -> float:
    """Time to first token of a question whose working set is one block, for the ratio."""
    from localsym.session import GenParams, Session, SessionConfig

    f = tmp / "one" / "one.py"
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text("def add_numbers(a, b):\n    total = a + b\n    return total\n", encoding="utf-8")
    with Session.open("code-one", str(path), opts, SessionConfig(block_tokens=block, recent_tokens=0)) as s:
        s.load(f.parent)
        times = []
        for _ in range(3):
            with s.ask(QUESTION.format(what="Add two numbers"), GenParams(max_tokens=8)) as turn:
                turn.text()
            times.append(turn.stats.ttft_s)
    return statistics.median(times)


def run(args: argparse.Namespace) -> int:
    from localsym.session import RunOptions, Tokenizer, default_model, models

    name = args.model or default_model()
    path = models.resolve(name)
    opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads)
    packages = [p for p in args.packages.split(",") if p]
    out: list[dict] = []
    t_start = time.perf_counter()
    with private_home("localsym-bench-code-"), tempfile.TemporaryDirectory(prefix="localsym-code-") as d:
        tmp = Path(d)
        with Tokenizer(str(path)) as vocab:
            for pkg in packages:
                out.append(_package(args, name, pkg, path, opts, tmp, vocab))
        one = _one_block_ttft(path, opts, tmp, args.block)
    rows = [r for p in out for r in p["questions"]]
    total = _summary(rows)
    result = {
        "model": name,
        "packages": out,
        **total,
        "one_block_ttft_s": round(one, 3),
        "ttft_ratio_to_one_block": round(total["ttft_s_median"] / one, 2) if total["ttft_s_median"] else None,
        "window_lines": args.window,
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    emit(result, args, _table)
    return 0


def _table(r: dict) -> str:
    head = f"{'package':<12}{'tokens':>8}{'blocks':>7}{'source':>8}{'bm25':>7}{'bm25 tok':>9}{'random':>8}{'answer':>8}"
    head += f"{'k mean/max':>12}{'ttft p50':>10}{'load s':>8}"
    lines = [
        f"bench code: {r['model']}, questions in words vs BM25 over {r['window_lines']}-line windows "
        "(as many as our blocks; 'tok': as many tokens)",
        head,
    ]
    for p in r["packages"]:
        lines.append(
            f"{p['package']:<12}{p['tokens']:>8}{p['blocks']:>7}{p['source_hit']:>8.2f}{p['bm25_hit']:>7.2f}"
            f"{p['bm25_tokens_hit']:>9.2f}{p['random_hit']:>8.2f}{p['answer_hit']:>8.2f}{p['k_mean']:>7.1f}/{p['k_max']:<4}"
            f"{p['ttft_s_median']:>10.2f}{p['load_s']:>8.1f}"
        )
    lines.append(
        f"{'all':<27}{r['source_hit']:>8.2f}{r['bm25_hit']:>7.2f}{r['bm25_tokens_hit']:>9.2f}{r['random_hit']:>8.2f}{r['answer_hit']:>8.2f}"
        f"{r['k_mean']:>7.1f}/{r['k_max']:<4}{r['ttft_s_median']:>10.2f}"
    )
    lines.append(f"one-block question ttft {r['one_block_ttft_s']:.2f}s (ratio {r['ttft_ratio_to_one_block']})")
    return "\n".join(lines)
