"""bench docs (#29): its cloze questions come from the documents' own text with their page or
section, its BM25 passages stay within a page or section, and one tiny end-to-end run on
SmolLM2 over a generated PDF and HTML page gives a result of the right shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from localsym.bench import docs as bench_docs
from localsym.bench.docs_questions import ASKED

TOPICS = [
    ("anchor", "The anchor chain is flaked on deck and inspected for rust before every long passage north."),
    ("engine", "The outboard engine is flushed with fresh water after each trip through brackish estuaries."),
    ("sails", "The mainsail is folded loosely and stored dry in the loft during the cold winter months."),
    ("radio", "The marine radio is tested on channel sixteen with the harbour office every Saturday morning."),
]


def _pdf(path: Path) -> Path:
    """A PDF of one topic a page, each page a paragraph of 12+ words under a heading."""
    from fpdf import FPDF

    pdf = FPDF()
    for title, text in TOPICS:
        pdf.add_page()
        pdf.set_font("helvetica", size=18)
        pdf.cell(0, 12, title.capitalize(), new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, f"{text} Crews who forget this pay for it later in the season.")
    pdf.output(str(path))
    return path


def _html(path: Path) -> Path:
    path.write_text(
        "<html><head><title>Club rules</title><script>var tracking = 'nothing to see';</script></head><body>"
        "<h1>Club rules</h1><h2>Moorings</h2><p>Members keep their dinghies on the western pontoon and "
        "pay the harbour fee before the first regatta of the year.</p>"
        "<h2>Kitchen</h2><p>The clubhouse kitchen closes at nine in the evening, and the last member out "
        "switches off the ovens and locks the terrace door.</p></body></html>",
        encoding="utf-8",
    )
    return path


def test_targets_and_passages_follow_pages_and_sections(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    pdf, html = _pdf(folder / "boat.pdf"), _html(folder / "club.html")
    paras = bench_docs.paragraphs(pdf) + bench_docs.paragraphs(html)
    poppler = {str(pdf.resolve()): bench_docs._pdftotext_pages(pdf)}
    a = bench_docs.make_targets(paras, 4, 0, poppler)
    assert a == bench_docs.make_targets(paras, 4, 0, poppler)  # deterministic in its seed
    assert {Path(t.path).name for t in a} == {"boat.pdf", "club.html"}  # every document asked about
    for t in a:
        assert t.cloze.count(bench_docs.BLANK) == 1 and t.word not in t.cloze.split()
        assert t.cloze.replace(bench_docs.BLANK, t.word) == t.sentence
        if t.path.endswith(".pdf"):
            page = next(i + 1 for i, (_, text) in enumerate(TOPICS) if text.split()[1] in t.sentence)
            assert t.page == page  # the page the sentence is on
        else:
            assert t.page is None and t.heading.endswith(("Moorings", "Kitchen"))
        assert "tracking" not in t.sentence  # script text is not content
    units = bench_docs.passages(paras, 8)
    assert all(len(u[3].split()) <= 8 for u in units)
    pdf_units = [u for u in units if u[0].endswith(".pdf")]
    assert {u[1] for u in pdf_units} == {1, 2, 3, 4}  # each passage within one page
    top = bench_docs._bm25(units)
    t = next(t for t in a if t.path.endswith(".pdf"))
    best = top(bench_docs.QUESTION.format(cloze=t.cloze), 1)[0]
    assert bench_docs.covers(units[best][0], bench_docs._pp(units[best][1]), units[best][2], units[best][3], t)


def test_end_to_end_tiny(home, tmp_path):
    from localsym.session import RunOptions, Tokenizer, models

    folder = tmp_path / "corpus"
    folder.mkdir()
    _pdf(folder / "boat.pdf")
    _html(folder / "club.html")
    path = models.resolve("smollm2-135m")
    with Tokenizer(str(path)) as vocab:
        r = bench_docs.measure(
            folder,
            str(path),
            RunOptions(n_ctx=1024, vram="cpu"),
            questions=3,
            block=128,
            window=40,
            answer_tokens=4,
            vocab=vocab,
        )
    assert r["files"] == ["boat.pdf", "club.html"] and r["skipped"] == []
    assert r["tokens"] > 0 and r["blocks"] >= 2 and r["load_s"] >= 0
    assert r["n"] == 3 and len(r["questions"]) == 3
    for key in ("source_hit", "bm25_hit", "bm25_tokens_hit", "random_hit", "answer_hit"):
        assert 0.0 <= r[key] <= 1.0
    assert 0 < r["k_max"] <= 8 and r["ttft_s_median"] > 0
    assert set(r["per_file"]) <= {"boat.pdf", "club.html"}
    for q in r["questions"]:
        assert q["k"] <= 8 and isinstance(q["bm25_hit"], bool) and 0.0 <= q["random_p"] <= 1.0
        if q["file"] == "boat.pdf":
            assert q["page"] in (1, 2, 3, 4)
    # four small pages and one short page of rules: the working set finds the paragraph
    assert r["source_hit"] >= 2 / 3
    table = bench_docs.table({**r, "model": "smollm2-135m", "corpus": [], "extraction": None, "targets": {}})
    assert "bench docs" in table and "all" in table


def test_extraction_reports_pdftotext_beside_ours(tmp_path):
    e = bench_docs.extraction(_pdf(tmp_path / "boat.pdf"), reps=1)
    assert e is not None and e["pages"] == 4 and e["localsym_pages_s"] > 0
    if e["pdftotext_pages_s"] is None:
        pytest.skip("pdftotext (poppler-utils) is not installed here")
    assert e["speed_vs_pdftotext"] > 0 and e["word_recall"] > 0.8


def test_written_questions_apply_only_where_their_answer_is(tmp_path):
    """The hand-written questions are used only for their own document, each where its quote
    is; another document (the tiny corpus) gets none and the bench falls back to cloze."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    pdf, html = _pdf(folder / "boat.pdf"), _html(folder / "club.html")
    paras = bench_docs.paragraphs(pdf) + bench_docs.paragraphs(html)
    got, notes = bench_docs.asked_targets(paras, {str(pdf.resolve()): bench_docs._pdftotext_pages(pdf)})
    assert got == [] and notes == []
    ninja = Path("/usr/share/doc/ninja-build/manual.html")
    if not ninja.is_file():
        pytest.skip("Ninja's manual (ninja-build) is not installed here")
    copy = folder / "manual.html"
    copy.write_bytes(ninja.read_bytes())
    got, notes = bench_docs.asked_targets(bench_docs.paragraphs(copy), {})
    assert len(got) >= 6 and notes == []
    for t in got:
        assert t.kind == "asked" and t.page is None and t.heading
        section = next(q.section for q in ASKED if q.question == t.question)
        assert t.heading.split(" > ")[-1] == section
        assert t.probe in " ".join(p.text for p in bench_docs.paragraphs(copy) if p.heading == t.heading).lower()
        assert bench_docs.covers(t.path, None, t.heading, None, t)  # its own section serves it
    # the same file with one answer edited away: that question is left out, with a note
    text = copy.read_text(encoding="utf-8").replace("NINJA_STATUS", "NINJA_PROGRESS")
    copy.write_text(text, encoding="utf-8")
    got2, notes2 = bench_docs.asked_targets(bench_docs.paragraphs(copy), {})
    assert len(got2) == len(got) - 1 and len(notes2) == 1 and "progress line" in notes2[0]
