"""Documents in a session (#29): a folder of a PDF, a DOCX, an EPUB, an HTML page and an mbox
loads as text with pages and sections, a damaged PDF is skipped with its reason, and a
question on each file brings that file (for the PDF: the page holding the answer) into
the sources. Real SmolLM2, real files written by the libraries that write them."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_documents import HTML, _docx, _epub, _mail

from localsym.documents import ExtractionCache
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


def test_a_document_read_once_is_not_extracted_again_by_any_session(home, tmp_path):
    """The extraction cache: a second session loading the same PDF bytes reads no page (the
    reading callback never runs) and gets the same blocks; a damaged cache entry is a miss,
    extracted again and rewritten."""
    from localsym import paths

    d = tmp_path / "one"
    d.mkdir()
    _manual(d / "manual.pdf")
    opts, cfg = RunOptions(n_ctx=1024, vram="cpu"), SessionConfig(block_tokens=64)
    pages: list[tuple[int, int, str]] = []
    with Session.open("first", "smollm2-135m", opts, cfg) as s:
        s.load(str(d), reading=lambda done, total, name: pages.append((done, total, name)))
        first = [b.tokens.tolist() for b in s.docs]
    assert pages and pages[-1] == (len(PAGES), len(PAGES), "manual.pdf")  # page by page
    entries = list((paths.cache_dir() / "documents").rglob("*.json.gz"))
    assert len(entries) == 1
    again: list[tuple[int, int, str]] = []
    with Session.open("second", "smollm2-135m", opts, cfg) as s:
        s.load(str(d), reading=lambda done, total, name: again.append((done, total, name)))
        assert again == [] and [b.tokens.tolist() for b in s.docs] == first
    raw = bytearray(entries[0].read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    entries[0].write_bytes(bytes(raw))
    with Session.open("third", "smollm2-135m", opts, cfg) as s:
        s.load(str(d), reading=lambda done, total, name: again.append((done, total, name)))
        assert again and [b.tokens.tolist() for b in s.docs] == first  # read again, same text
    assert ExtractionCache(entries[0].parent.parent).get(entries[0].name.split("-r")[0]) is not None  # rewritten


def test_extraction_cache_misses_on_damage_and_never_fails_a_load(tmp_path):
    from localsym.documents import Document, Part

    cache = ExtractionCache(tmp_path / "c")
    doc = Document("pdf", [Part("One page.", 1, "Intro", True), Part("Two.", 2, None)], "T")
    digest = "ab" * 32
    assert cache.get(digest) is None and cache.put(digest, doc)
    assert cache.get(digest) == doc
    assert cache.get("cd" * 32) is None  # another file's bytes
    entry = next((tmp_path / "c").rglob("*.json.gz"))
    for damage in (b"", b"not gzip", entry.read_bytes()[:20]):
        entry.write_bytes(damage)
        assert cache.get(digest) is None
    import gzip
    import json

    rec = {"format": 1, "digest": digest, "checksum": "0" * 64, "body": {"kind": "pdf", "parts": []}}
    entry.write_bytes(gzip.compress(json.dumps(rec).encode()))
    assert cache.get(digest) is None  # the checksum does not match its body
    blocked = tmp_path / "file"
    blocked.write_text("x")
    assert ExtractionCache(blocked).put(digest, doc) is False  # cannot write: no error, a miss next time
