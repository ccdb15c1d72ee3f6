"""`localsym bench docs`: questions in words over real documents no one here wrote (a PDF
manual and an HTML manual from Debian's documentation packages), cited by page or section,
against BM25 over fixed passages in the same run; and the PDF reader's pages/s beside
poppler's ``pdftotext``.

Documents: ``--pdf`` (default: the first PDF of 50+ pages under /usr/share/doc, else one
unpacked from a Debian documentation package in apt's cache, e.g. ``ledger``'s 144-page
manual) and ``--docs`` (default: an HTML manual under /usr/share/doc, e.g. Ninja's). The
extraction speed is measured on the whole PDF (``localsym.documents.measure.measure_pdf``);
the session loads the other documents whole and the PDF's first pages up to ``--tokens`` in
all (a prefix keeps its page numbers), copied into one folder.

Questions: paragraphs of 12+ words are drawn by seed from the documents' own text (as our
reader gives it; a PDF's paragraph must also be on the same page in pdftotext's text, so our
page numbers are checked against poppler's). From the paragraph one sentence of 8-40
mostly plain words, found once in the corpus, becomes a cloze: its rarest content word is
left out, "Fill in the blank from the documents: "... ____ ..." Which word goes in the
blank? Answer with that word." Each question is asked in the same session (no earlier turn
brought along).

Judged per question: source hit (a block the question chose, signal not 'refresh', is of the
same file and covers the paragraph's page (PDF) or section, or holds the words around the
blank), k (those blocks), BM25 over ``--window``-word passages cut within each page or
section (SQLite FTS5, the same words) at the same k and at the same number of tokens, random
at that k, answer hit (the held-out word in the answer), time to first token (median), load
time.
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsym.bench import baselines, emit, private_home
from localsym.memory import lexical

QUESTION = 'Fill in the blank from the documents: "{cloze}" Which word goes in the blank? Answer with that word.'
BLANK = "____"
MIN_PDF_PAGES = 50
MIN_ASKED = 5  # fewer written questions apply to the documents found: cloze questions instead
# Debian documentation packages that ship a PDF manual, looked for in apt's cache when no PDF
# of 50+ pages is installed (``apt-get download NAME`` puts one there too)
DEB_MANUALS = ("ledger", "docbook-xsl-doc-pdf", "camlidl-doc")
HTML_MANUALS = (
    "/usr/share/doc/ninja-build/manual.html",
    "/usr/share/doc/python3/python-policy.html",
    "/usr/share/doc/fontconfig/fontconfig-user.html",
)
_WORD = re.compile(r"\w+")
_PLAIN = re.compile(r"^[(\"']?[A-Za-z][a-z'-]*[)\"',.;:!?]*$")


@dataclass
class Paragraph:
    path: str  # absolute, in the corpus folder
    page: int | None
    heading: str
    text: str  # whitespace-normalised


@dataclass
class Target:
    path: str
    page: int | None
    heading: str
    sentence: str
    word: str  # the held-out word (cloze), or the answer's words (a written question)
    cloze: str
    probe: (
        str  # the words around the blank (or the answer's quote), whitespace-normalised: a unit holding them holds it
    )
    question: str = ""  # what is asked (a cloze: QUESTION around it)
    answer: str = ""  # regular expression the reply must match (case-insensitive)
    kind: str = "cloze"  # or "asked": written by hand (bench/docs_questions.py)

    def __post_init__(self) -> None:
        if not self.question:
            self.question = QUESTION.format(cloze=self.cloze)
        if not self.answer:
            self.answer = rf"\b{re.escape(self.word)}\b"


# -- finding real documents -----------------------------------------------------------------------
def _pages(path: Path) -> int:
    from localsym.documents._pdf import page_count

    try:
        return page_count(path)
    except Exception:  # a damaged PDF is no candidate
        return 0


def find_pdf(cache: Path) -> tuple[Path | None, str]:
    """A real PDF manual of 50+ pages on this machine and where it came from; else the largest
    one found (or None) with the reason."""
    found = [(p, _pages(p)) for p in sorted(Path("/usr/share/doc").rglob("*.pdf")) if p.is_file()]
    big = [(p, n) for p, n in found if n >= MIN_PDF_PAGES]
    if big:
        p, n = max(big, key=lambda x: x[1])
        return p, f"installed ({n} pages)"
    for name in DEB_MANUALS:
        for deb in sorted(Path("/var/cache/apt/archives").glob(f"{name}_*.deb")):
            got = _unpack_pdf(deb, cache)
            if got is not None and (n := _pages(got)) >= MIN_PDF_PAGES:
                return got, f"unpacked from {deb.name} ({n} pages)"
    if found:
        p, n = max(found, key=lambda x: x[1])
        return p, f"no PDF of {MIN_PDF_PAGES}+ pages here: the largest installed ({n} pages)"
    return None, "no PDF manual on this machine: pass --pdf FILE"


def _unpack_pdf(deb: Path, cache: Path) -> Path | None:
    """The largest PDF inside a .deb, unpacked (once) under ``cache``."""
    if shutil.which("dpkg-deb") is None:
        return None
    out = cache / deb.stem
    done = sorted(out.glob("*.pdf"))
    if done:
        return done[0]
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    best: tuple[int, str, bytes] | None = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(".pdf") and (best is None or m.size > best[0]):
                    f = tar.extractfile(m)
                    if f is not None:
                        best = (m.size, Path(m.name).name, f.read())
    except tarfile.TarError:
        best = None
    finally:
        proc.wait()
    if best is None:
        return None
    out.mkdir(parents=True, exist_ok=True)
    dest = out / best[1]
    dest.write_bytes(best[2])
    return dest


def find_docs() -> list[Path]:
    """An HTML manual installed here (the first of a short list, else the largest under
    /usr/share/doc)."""
    for p in HTML_MANUALS:
        if Path(p).is_file():
            return [Path(p)]
    found = [p for p in Path("/usr/share/doc").rglob("*.html") if p.is_file() and not p.is_symlink()]
    found.sort(key=lambda p: -p.stat().st_size)
    return found[:1]


# -- the corpus -----------------------------------------------------------------------------------
def paragraphs(path: Path) -> list[Paragraph]:
    """A document's paragraphs as our reader gives them, each with its page and heading."""
    from localsym.documents import iter_parts

    out = []
    for part in iter_parts(path):
        for para in re.split(r"\n\s*\n", part.text):
            text = " ".join(para.split())
            if text:
                out.append(Paragraph(str(path.resolve()), part.page, part.heading or "", text))
    return out


def build_corpus(
    pdf: Path | None, docs: list[Path], dest: Path, budget: int, count: Callable[[str], int]
) -> tuple[list[Path], dict[str, Any]]:
    """The documents copied into ``dest``: ``docs`` whole (while they fit in 40% of
    ``budget``), then the PDF's first pages up to what is left."""
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    info: dict[str, Any] = {"documents": []}
    used = 0
    for d in docs:
        n = count("\n\n".join(p.text for p in paragraphs(d)))
        if out and used + n > 0.4 * budget:
            continue
        target = dest / d.name
        shutil.copyfile(d, target)
        out.append(target)
        used += n
        info["documents"].append({"file": d.name, "from": str(d), "tokens": n})
    if pdf is not None:
        per_page: Counter[int] = Counter()
        for p in paragraphs(pdf):
            per_page[p.page or 0] += count(p.text)
        keep, total = 0, 0
        for page in sorted(per_page):
            if keep and used + total + per_page[page] > budget:
                break
            keep, total = page, total + per_page[page]
        pages = max(per_page, default=0)
        target = dest / pdf.name
        if keep < pages:
            target = dest / f"{pdf.stem}-p1-{keep}.pdf"
            _pdf_prefix(pdf, target, keep)
        else:
            shutil.copyfile(pdf, target)
        out.append(target)
        info["documents"].append(
            {"file": target.name, "from": str(pdf), "tokens": total, "pages": keep, "of_pages": pages}
        )
    return out, info


def _pdf_prefix(src: Path, dest: Path, pages: int) -> None:
    """The first ``pages`` pages of ``src`` as a PDF of their own (PDFium copies them as they are)."""
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(src)
    new = pdfium.PdfDocument.new()
    try:
        new.import_pages(doc, list(range(pages)))
        new.save(str(dest))
    finally:
        new.close()
        doc.close()


def _pdftotext_pages(path: Path) -> list[set[str]] | None:
    """Each page's words as poppler reads them (None without pdftotext)."""
    tool = shutil.which("pdftotext")
    if tool is None:
        return None
    r = subprocess.run([tool, "-enc", "UTF-8", str(path), "-"], capture_output=True, check=False, timeout=600)
    return [set(_WORD.findall(p.lower())) for p in r.stdout.decode("utf-8", "replace").split("\f")]


def make_targets(paras: list[Paragraph], n: int, seed: int, poppler: dict[str, list[set[str]] | None]) -> list[Target]:
    """``n`` cloze questions drawn by ``seed``, shared out over the documents by their words
    (one at least)."""
    df: Counter[str] = Counter()
    for p in paras:
        df.update({w.lower() for w in _WORD.findall(p.text)})
    seen: Counter[str] = Counter()
    for p in paras:
        seen.update(_sentences(p.text))
    by_doc: dict[str, list[Target]] = {}
    for p in paras:
        if len(p.text.split()) < 12:
            continue
        t = _cloze(p, df, seen, poppler.get(p.path))
        if t is not None:
            by_doc.setdefault(p.path, []).append(t)
    rng = random.Random(seed)
    size: Counter[str] = Counter()
    for p in paras:
        size[p.path] += len(p.text.split())
    total = sum(size[d] for d in by_doc)
    out: list[Target] = []
    docs = sorted(by_doc)
    for i, d in enumerate(docs):
        left = n - len(out)
        want = left if i == len(docs) - 1 else max(1, round(n * size[d] / max(total, 1)))
        out += rng.sample(by_doc[d], min(want, left, len(by_doc[d])))
    return out


def asked_targets(paras: list[Paragraph], poppler: dict[str, list[set[str]] | None]) -> tuple[list[Target], list[str]]:
    """The written questions (bench/docs_questions.py) whose document is here and whose quote
    is where they say (the PDF page in our text and in poppler's, or the section), and a
    note for each one left out."""
    from localsym.bench.docs_questions import ASKED

    out: list[Target] = []
    notes: list[str] = []
    docs: dict[str, list[Paragraph]] = {}
    for p in paras:
        docs.setdefault(p.path, []).append(p)
    for q in ASKED:
        path = next(
            (
                d
                for d, ps in docs.items()
                # a full file name, or a stem's start (``ledger3`` for ``ledger3-p1-24.pdf``)
                if (Path(d).name == q.doc or ("." not in q.doc and Path(d).name.startswith(q.doc)))
                and any(q.marker in p.text for p in ps[:50])
            ),
            None,
        )
        if path is None:
            continue  # its document is not in this corpus
        quote = " ".join(q.quote.split()).lower()
        found = next(
            (
                p
                for p in docs[path]
                if quote in p.text.lower()
                and (q.page is None or p.page == q.page)
                and (q.section is None or p.heading.split(" > ")[-1] == q.section)
            ),
            None,
        )
        pages = poppler.get(path)
        if found is not None and q.page is not None and pages is not None:
            words = {w.lower() for w in _WORD.findall(q.quote)}
            if not 1 <= q.page <= len(pages) or not words <= pages[q.page - 1]:
                found = None  # poppler does not put it on that page: our page numbers would be wrong
        if found is None:
            notes.append(f"left out (not at {'p. ' + str(q.page) if q.page else q.section} here): {q.question}")
            continue
        out.append(
            Target(path, found.page, found.heading, found.text[:200], q.quote, "", quote, q.question, q.answer, "asked")
        )
    return out, notes


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z(\"'])", text) if s.strip()]


def _cloze(p: Paragraph, df: Counter[str], seen: Counter[str], poppler: list[set[str]] | None) -> Target | None:
    """The paragraph's first fit sentence with its rarest content word left out, or None."""
    for s in _sentences(p.text):
        words = s.split()
        if not 8 <= len(words) <= 40 or seen[s] != 1:
            continue
        if sum(bool(_PLAIN.match(w)) for w in words) < 0.7 * len(words):
            continue  # code, a table row, a list of options
        page_words = None
        if poppler is not None and p.page is not None:
            if not 1 <= p.page <= len(poppler):
                continue
            page_words = poppler[p.page - 1]
            plain = [w.lower() for w in _WORD.findall(s)]
            if sum(w in page_words for w in plain) < 0.9 * len(plain):
                continue  # poppler does not put this sentence on that page
        best: tuple[int, int] | None = None
        for i, w in enumerate(words[1:], 1):
            core = w.strip("()\"',.;:!?")
            if not re.fullmatch(r"[A-Za-z]{5,}", core) or core.lower() in lexical.STOP:
                continue
            if page_words is not None and core.lower() not in page_words:
                continue
            rank = (df[core.lower()], i)
            if best is None or rank < best:
                best = rank
        if best is None:
            continue
        i = best[1]
        word = words[i].strip("()\"',.;:!?")
        cloze = " ".join([*words[:i], words[i].replace(word, BLANK), *words[i + 1 :]])
        probe = " ".join(words[max(0, i - 3) : i + 4])
        return Target(p.path, p.page, p.heading, s, word, cloze, probe)
    return None


def passages(paras: list[Paragraph], size: int) -> list[tuple[str, int | None, str, str]]:
    """BM25's units: ``size``-word windows cut within each page (PDF) or section."""
    groups: list[tuple[str, int | None, str, list[str]]] = []
    for p in paras:
        if groups and groups[-1][:3] == (p.path, p.page, p.heading):
            groups[-1][3].append(p.text)
        else:
            groups.append((p.path, p.page, p.heading, [p.text]))
    out = []
    for path, page, heading, texts in groups:
        words = " ".join(texts).split()
        for a in range(0, len(words), size):
            out.append((path, page, heading, " ".join(words[a : a + size])))
    return out


def _bm25(units: list[tuple[str, int | None, str, str]]) -> Callable[[str, int], list[int]]:
    return baselines.bm25([u[3] for u in units], [Path(u[0]).name for u in units])


def covers(path: str, pages: Iterable[int] | None, section: str | None, text: str | None, t: Target) -> bool:
    """A unit (a block or a passage) serves the question: same file, and the paragraph's page
    (paged documents) or section, or the words around the blank."""
    if path != t.path:
        return False
    if t.page is not None and pages:
        lo, hi = list(pages)[0], list(pages)[-1]
        if lo <= t.page <= hi:
            return True
    if t.page is None and section is not None and section == t.heading:
        return True
    return text is not None and t.probe in " ".join(text.split())


# -- the run --------------------------------------------------------------------------------------
def measure(
    folder: Path,
    model_path: str,
    opts,
    *,
    questions: int = 20,
    seed: int = 0,
    block: int = 256,
    window: int = 300,
    answer_tokens: int = 32,
    kind: str = "asked",
    vocab,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Load ``folder`` into a fresh session, ask cloze questions drawn from its documents, and
    score the working sets against BM25 over ``window``-word passages and random; ``vocab``:
    the model's ``Tokenizer`` (passages' tokens, blocks' text)."""
    from localsym.session import GenParams, Session, SessionConfig

    files = sorted(p for p in folder.iterdir() if p.is_file())
    paras = [p for f in files for p in paragraphs(f)]
    poppler = {str(f.resolve()): _pdftotext_pages(f) for f in files if f.suffix.lower() == ".pdf"}
    notes: list[str] = []
    targets: list[Target] = []
    if kind == "asked":
        targets, notes = asked_targets(paras, poppler)
        if len(targets) < MIN_ASKED:
            notes.append(f"{len(targets)} written questions apply to these documents: cloze questions instead")
            targets = []
    if not targets:
        kind = "cloze"
        targets = make_targets(paras, questions, seed, poppler)
    units = passages(paras, window)
    bm25 = _bm25(units)
    unit_tokens = [len(vocab.tokenize(u[3])) for u in units]
    cfg = SessionConfig(block_tokens=block, recent_tokens=0)
    rows: list[dict[str, Any]] = []
    with Session.open("docs-bench", str(model_path), opts, cfg) as s:
        t0 = time.perf_counter()
        rep = s.load(folder)
        load_s = time.perf_counter() - t0
        docs = s.docs
        texts = [vocab.detokenize([int(t) for t in b.tokens]) for b in docs]
        by_key: dict[tuple, list[int]] = {}
        for i, b in enumerate(docs):
            by_key.setdefault((b.source, tuple(b.pages or ()), b.label or None), []).append(i)
        for qi, t in enumerate(targets):
            q = t.question
            with s.ask(q, GenParams(max_tokens=answer_tokens)) as turn:
                answer = turn.text()
            st = turn.stats
            chosen = [x for x in st.sources if x.get("signal") != "refresh"]
            k = len(chosen)

            def rows_of(x: dict) -> list[int]:
                return by_key.get((x["path"], tuple(x.get("pages") or ()), x.get("section")), [])

            hit = any(
                any(covers(x["path"], x.get("pages"), x.get("section"), texts[i], t) for i in rows_of(x))
                or covers(x["path"], x.get("pages"), x.get("section"), None, t)
                for x in chosen
            )
            used = sum(statistics.mean(docs[i].n_tokens for i in rows_of(x)) if rows_of(x) else block for x in chosen)
            top = bm25(q, max(k, 1))
            bm_hit = any(covers(units[u][0], _pp(units[u][1]), units[u][2], units[u][3], t) for u in top)
            by_tokens = baselines.top_within_tokens(bm25, q, k, unit_tokens, used)
            bm_tok_hit = any(covers(units[u][0], _pp(units[u][1]), units[u][2], units[u][3], t) for u in by_tokens)
            m = sum(covers(b.source, b.pages, b.label, texts[i], t) for i, b in enumerate(docs))
            answer_hit = bool(re.search(t.answer, answer, re.IGNORECASE))
            rows.append(
                {
                    "file": Path(t.path).name,
                    "page": t.page,
                    "section": t.heading,
                    "question": t.question,
                    "kind": t.kind,
                    "word": t.word,
                    "k": k,
                    "source_hit": hit,
                    "bm25_hit": bm_hit,
                    "bm25_tokens_hit": bm_tok_hit,
                    "bm25_tokens_passages": len(by_tokens),
                    "random_p": round(baselines.p_random(len(docs), m, k), 4),
                    "answer_hit": answer_hit,
                    "answer": answer.strip()[:120],
                    "ttft_s": round(st.ttft_s, 3),
                    "sources": [
                        {key: x.get(key) for key in ("pages", "section", "signal")} | {"file": Path(x["path"]).name}
                        for x in chosen
                    ],
                    "refreshed": len(st.sources) - k,
                }
            )
            if log:
                log(
                    f"  {qi + 1}/{len(targets)} {Path(t.path).name} p.{t.page} {t.word!r}: k={k} hit={hit} "
                    f"bm25={bm_hit} answer={answer_hit} ttft={st.ttft_s:.2f}s {answer.strip()[:40]!r}"
                )
    per_file = {}
    for f in sorted({r["file"] for r in rows}):
        per_file[f] = summary([r for r in rows if r["file"] == f])
    return {
        "files": [f.name for f in files],
        "tokens": rep.tokens,
        "blocks": len(docs),
        "skipped": [list(x) for x in rep.skipped],
        "load_s": round(load_s, 1),
        "load_tok_s": round(rep.tokens / load_s, 1) if load_s > 0 else None,
        "questions_kind": kind,
        "notes": notes,
        "passages": len(units),
        "window_words": window,
        "per_file": per_file,
        "questions": rows,
        **summary(rows),
    }


def _pp(page: int | None) -> tuple[int, int] | None:
    return (page, page) if page is not None else None


def summary(rows: list[dict]) -> dict[str, Any]:
    return {"n": len(rows), **baselines.hit_rates(rows)}


def extraction(pdf: Path | None, reps: int = 3) -> dict[str, Any] | None:
    """Pages/s of our PDF reader, bare PDFium and pdftotext on the whole PDF."""
    if pdf is None:
        return None
    from localsym.documents.measure import measure_pdf

    m = measure_pdf(pdf, reps=reps)
    out = {
        "file": pdf.name,
        "pages": m["pages"],
        "localsym_pages_s": m["localsym"]["pages_s"],
        "pdfium_pages_s": m["pdfium_plain"]["pages_s"],
        "pdftotext_pages_s": m["pdftotext"]["pages_s"] if m.get("pdftotext") else None,
        "speed_vs_pdftotext": m.get("speed_vs_pdftotext"),
        "word_recall": m.get("word_recall"),
        "word_precision": m.get("word_precision"),
    }
    if not m.get("pdftotext"):
        out["pdftotext"] = "not installed (poppler-utils)"
    return out


def run(args: argparse.Namespace) -> int:
    from localsym import paths
    from localsym.session import RunOptions, Tokenizer, default_model, models

    name = args.model or default_model()
    path = models.resolve(name)
    opts = RunOptions(n_ctx=args.hot, vram=args.vram, n_threads=args.threads)
    t_start = time.perf_counter()
    if args.pdf:
        pdf: Path | None = Path(args.pdf)
        pdf_from = "given"
    else:
        pdf, pdf_from = find_pdf(paths.cache_dir() / "bench-docs")
    docs = [Path(p) for p in args.docs.split(",") if p] if args.docs else find_docs()
    if pdf is None and not docs:
        raise SystemExit("bench docs: no documents found here: pass --pdf FILE and --docs FILE,...")
    print(f"bench docs: PDF {pdf} ({pdf_from}); others {[str(d) for d in docs]}", file=sys.stderr)
    ext = extraction(pdf, args.reps)
    with private_home("localsym-bench-docs-"), tempfile.TemporaryDirectory(prefix="localsym-docs-") as d:
        folder = Path(d) / "corpus"
        with Tokenizer(str(path)) as vocab:
            _, info = build_corpus(pdf, docs, folder, args.tokens, lambda s: len(vocab.tokenize(s)))
            res = measure(
                folder,
                str(path),
                opts,
                questions=args.questions,
                seed=args.seed,
                block=args.block,
                window=args.window,
                answer_tokens=args.answer_tokens,
                kind=args.kind,
                vocab=vocab,
                log=lambda m: print(m, file=sys.stderr),
            )
    result = {
        "model": name,
        "pdf_from": pdf_from,
        "corpus": info["documents"],
        "extraction": ext,
        **res,
        "targets": {
            "source_hit>=0.9": res["source_hit"] >= 0.9,
            "k<=8": res["k_max"] <= 8,
            "source_hit>=bm25_same_k": res["source_hit"] >= res["bm25_hit"],
            "answer_hit>=0.5": res["answer_hit"] >= 0.5,
            "extraction>=0.5x_pdftotext": bool(ext and ext["speed_vs_pdftotext"] and ext["speed_vs_pdftotext"] >= 0.5),
        },
        "seconds": round(time.perf_counter() - t_start, 1),
    }
    emit(result, args, table)
    return 0


def table(r: dict) -> str:
    lines = [
        f"bench docs: {r['model']}, {r['questions_kind']} questions in words vs BM25 over "
        f"{r['window_words']}-word passages "
        "per page/section (as many as our blocks; 'tok': as many tokens)",
        "corpus: "
        + "; ".join(
            f"{d['file']} {d['tokens']} tok" + (f" (pages 1-{d['pages']} of {d['of_pages']})" if "pages" in d else "")
            for d in r["corpus"]
        ),
        f"{'file':<28}{'n':>4}{'source':>8}{'bm25':>7}{'bm25 tok':>9}{'random':>8}{'answer':>8}"
        f"{'k mean/max':>12}{'ttft p50':>10}",
    ]
    for f, p in r["per_file"].items():
        lines.append(
            f"{f[:27]:<28}{p['n']:>4}{p['source_hit']:>8.2f}{p['bm25_hit']:>7.2f}{p['bm25_tokens_hit']:>9.2f}"
            f"{p['random_hit']:>8.2f}{p['answer_hit']:>8.2f}{p['k_mean']:>7.1f}/{p['k_max']:<4}{p['ttft_s_median']:>10.2f}"
        )
    lines.append(
        f"{'all':<28}{r['n']:>4}{r['source_hit']:>8.2f}{r['bm25_hit']:>7.2f}{r['bm25_tokens_hit']:>9.2f}"
        f"{r['random_hit']:>8.2f}{r['answer_hit']:>8.2f}{r['k_mean']:>7.1f}/{r['k_max']:<4}"
        f"{r['ttft_s_median'] or 0:>10.2f}"
    )
    lines.append(f"load {r['tokens']} tokens in {r['blocks']} blocks: {r['load_s']} s ({r['load_tok_s']} tok/s)")
    e = r.get("extraction")
    if e:
        vs = e.get("pdftotext") or f"pdftotext {e['pdftotext_pages_s']}, x{e['speed_vs_pdftotext']}"
        lines.append(
            f"extraction {e['file']} ({e['pages']} pages): localsym {e['localsym_pages_s']} pages/s, "
            f"bare PDFium {e['pdfium_pages_s']}, {vs}; word recall {e['word_recall']}"
        )
    lines += [f"note: {n}" for n in r.get("notes", [])]
    lines.append("targets: " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in r["targets"].items()))
    return "\n".join(lines)
