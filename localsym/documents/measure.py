"""Measure the PDF reader against poppler's ``pdftotext`` in the same run: pages a second and how
much of pdftotext's text (as words) ours holds. ``localsym bench docs`` calls ``measure_pdf``.

Run alone: ``python -m localsym.documents.measure manual.pdf [more.pdf ...]``.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from localsym.documents._api import iter_parts
from localsym.documents._pdf import page_count

_WORD = re.compile(r"\w+")


def measure_pdf(path: Path, reps: int = 3, pdftotext: str | None = None) -> dict[str, Any]:
    """Pages a second of localsym's reader, of bare PDFium text and of ``pdftotext`` (when
    installed), each the median of ``reps`` runs taken in turns, and word overlap with pdftotext.

    Returns:
        {"path", "pages", "localsym": {"seconds", "pages_s", "chars"}, "pdfium_plain": {...},
        "pdftotext": {...} or None, "speed_vs_pdftotext", "word_recall", "word_precision",
        "word_f1", "hyphenated_line_ends": {"localsym", "pdftotext"}}. Recall is the share of
        pdftotext's words that ours holds (running headers and page numbers, which we drop on
        purpose, count against it); precision the share of ours that pdftotext holds.
    """
    path = Path(path)
    pages = page_count(path)
    tool = pdftotext or shutil.which("pdftotext")
    runs: dict[str, Callable[[], str]] = {
        "localsym": lambda: "\n\n".join(p.text for p in iter_parts(path, kind="pdf")),
        "pdfium_plain": lambda: _pdfium_plain(path),
    }
    if tool:
        runs["pdftotext"] = lambda: _pdftotext(tool, path)
    times: dict[str, list[float]] = {k: [] for k in runs}
    texts: dict[str, str] = {}
    for _ in range(max(1, reps)):
        for name, run in runs.items():
            t = time.perf_counter()
            texts[name] = run()
            times[name].append(time.perf_counter() - t)
    out: dict[str, Any] = {"path": str(path), "pages": pages, "reps": reps, "pdftotext": None}
    for name in runs:
        s = statistics.median(times[name])
        out[name] = {
            "seconds": round(s, 4),
            "pages_s": round(pages / s, 1) if s > 0 else None,
            "chars": len(texts[name]),
        }
    if "pdftotext" in texts:
        ours, ref = Counter(_words(texts["localsym"])), Counter(_words(texts["pdftotext"]))
        common = sum((ours & ref).values())
        recall = common / max(1, sum(ref.values()))
        precision = common / max(1, sum(ours.values()))
        out["word_recall"] = round(recall, 4)
        out["word_precision"] = round(precision, 4)
        out["word_f1"] = round(2 * recall * precision / max(1e-9, recall + precision), 4)
        out["speed_vs_pdftotext"] = round(out["pdftotext"]["seconds"] / max(1e-9, out["localsym"]["seconds"]), 2)
        out["hyphenated_line_ends"] = {
            k: len(re.findall(r"[a-z]-\n[a-z]", texts[k])) for k in ("localsym", "pdftotext")
        }
    return out


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _pdfium_plain(path: Path) -> str:
    """PDFium's text with nothing done to it: the floor under our reader's own work."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(path)
    try:
        out = []
        for i in range(len(doc)):
            page = doc[i]
            tp = page.get_textpage()
            out.append(tp.get_text_range())
            tp.close()
            page.close()
        return "\f".join(out)
    finally:
        doc.close()


def _pdftotext(tool: str, path: Path) -> str:
    r = subprocess.run([tool, "-enc", "UTF-8", str(path), "-"], capture_output=True, check=False, timeout=600)
    return r.stdout.decode("utf-8", "replace")


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(json.dumps(measure_pdf(Path(arg)), indent=1))
