"""Documents in a session (#29): a folder of a PDF, a DOCX, an EPUB, an HTML page and an mbox
loads as text with pages and sections, a damaged PDF is skipped with its reason, and a
question on each file brings that file (for the PDF: the page holding the answer) into
the sources. Real SmolLM2, real files written by the libraries that write them."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_documents import HTML, _docx, _epub, _mail

from localsym.session import GenParams, RunOptions, Session, SessionConfig, source_label

pytest.importorskip("fpdf")

PAGES = [
    ("Rigging", "The mast is stepped on the keel and held by two shrouds and a forestay."),
    ("Sails", "The mainsail is hoisted first and lowered last, always head to wind."),
    ("Anchoring", "The anchor chain is forty metres long and marked in red every ten metres."),
    ("Engine", "The outboard engine takes unleaded petrol mixed with two-stroke oil."),
    ("Safety", "Life jackets are stowed in the locker under the port bench."),
]


def _manual(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    for n, (title, text) in enumerate(PAGES, 1):
        pdf.add_page()
        pdf.set_font("helvetica", size=18)
        pdf.cell(0, 12, f"{n} {title}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, f"{text} " + "The crew checks this before every trip in the season. " * 6)
    pdf.output(str(path))
    return path


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "papers"
    d.mkdir()
    _manual(d / "manual.pdf")
    whole = (d / "manual.pdf").read_bytes()
    (d / "cut.pdf").write_bytes(whole[: len(whole) // 2])
    _docx(d / "notes.docx")
    _epub(d / "sea.epub")
    (d / "apt.html").write_text(HTML, encoding="utf-8")
    with open(d / "Inbox", "wb") as f:
        f.write(b"From ann@example.org Sat Dec  5 10:00:00 2026\n" + _mail().as_bytes() + b"\n")
    return d


def _sources(s: Session, question: str) -> list[dict]:
    with s.ask(question, GenParams(max_tokens=4)) as turn:
        turn.text()
    return [x for x in turn.stats.sources if x.get("signal") != "refresh"]


def test_a_folder_of_documents_loads_as_text_and_answers_cite_the_page(home, folder):
    with Session.open("docs", "smollm2-135m", RunOptions(n_ctx=2048, vram="cpu"), SessionConfig(block_tokens=64)) as s:
        rep = s.load(str(folder))
        assert rep.files == 5, rep.skipped
        assert [(Path(p).name, why) for p, why in rep.skipped] == [("cut.pdf", rep.skipped[0][1])]
        assert rep.skipped[0][1].startswith("truncated or damaged PDF")
        text = "".join(s.engine.model.detokenize(b.tokens.tolist()) for b in s.docs)
        assert "secretScript" not in text and "Packages are installed with apt." in text  # script is no content
        assert "High water comes twice a day." in text and "Reef early when the wind rises" in text

        src = _sources(s, "How long is the anchor chain?")
        pdf = [x for x in src if Path(x["path"]).name == "manual.pdf"]
        assert any(x["pages"] and x["pages"][0] <= 3 <= x["pages"][1] for x in pdf), src
        assert any("p. 3" in source_label(x) for x in pdf)
        for question, name in [
            ("When should you reef the sails in rising wind?", "notes.docx"),
            ("What kind of loop does a bowline knot make?", "sea.epub"),
            ("How do I purge a package with apt?", "apt.html"),
            ("At what time is dinner at the harbour restaurant?", "Inbox"),
        ]:
            assert name in {Path(x["path"]).name for x in _sources(s, question)}, question
