"""Documents built with real writers (fpdf2, python-docx, an EPUB zip, the email package), read
back: text, pages, headings, and each damaged file's one-line reason."""

from __future__ import annotations

import io
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from localsym.documents import Document, DocumentError, document_kind, extract, iter_parts
from localsym.documents._text import fix_ligatures
from localsym.ingest import walk

LOREM = (
    "The boat is kept at the northern pier from April to October. Its engine needs fresh oil "
    "every fifty hours of running, and the fuel filter is changed at the start of each season."
)


# -- writers -------------------------------------------------------------------------------------
def _manual_pdf(path: Path, pages: int = 4) -> Path:
    """A PDF with a running header and footer on every page, a title and headings in bigger type."""
    from fpdf import FPDF

    class Manual(FPDF):
        def header(self) -> None:
            self.set_font("helvetica", size=8)
            self.cell(0, 5, "ACME Boat Manual - internal edition", align="C")
            self.ln(10)

        def footer(self) -> None:
            self.set_y(-15)
            self.set_font("helvetica", size=8)
            self.cell(0, 10, f"Page {self.page_no()}", align="C")

    pdf = Manual()
    for n in range(1, pages + 1):
        pdf.add_page()
        pdf.set_font("helvetica", size=20)
        pdf.cell(0, 12, f"Chapter {n} Maintenance part {n}", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", size=15)
        pdf.cell(0, 10, f"{n}.1 Engine oil", new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("helvetica", size=11)
        pdf.multi_cell(0, 6, f"{LOREM} Marker page{n}word.")
        pdf.ln(6)
        pdf.multi_cell(0, 6, "A second paragraph about the sails, which are stored dry in the loft.")
    pdf.output(str(path))
    return path


def _image_pdf(path: Path) -> Path:
    from fpdf import FPDF
    from PIL import Image

    img = Image.new("RGB", (200, 100), "white")
    pdf = FPDF()
    for _ in range(2):
        pdf.add_page()
        pdf.image(img, x=10, y=10, w=180)
    pdf.output(str(path))
    return path


def _encrypted_pdf(path: Path) -> Path:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_encryption(owner_password="owner", user_password="secret")
    pdf.add_page()
    pdf.set_font("helvetica", size=11)
    pdf.multi_cell(0, 6, LOREM)
    pdf.output(str(path))
    return path


def _docx(path: Path) -> Path:
    import docx

    d = docx.Document()
    d.core_properties.title = "Boat notes"
    d.add_heading("Boat notes", level=0)
    d.add_heading("Installation", level=1)
    d.add_paragraph("Unpack the engine and fit it to the transom.")
    d.add_heading("From source", level=2)
    d.add_paragraph("Build the hull from the plans in the appendix.")
    t = d.add_table(rows=2, cols=3)
    for r, row in enumerate([("part", "count", "price"), ("oar", "2", "40 EUR")]):
        for c, v in enumerate(row):
            t.cell(r, c).text = v
    d.add_heading("Sailing", level=1)
    d.add_paragraph("Reef early when the wind rises above five Beaufort.")
    d.save(str(path))
    return path


def _epub(path: Path) -> Path:
    """A minimal EPUB 3 by hand: mimetype first and stored, a container, a package, a nav."""
    chapter = (
        '<?xml version="1.0" encoding="utf-8"?><html xmlns="http://www.w3.org/1999/xhtml"><head><title>x</title>'
        "</head><body><h1>{title}</h1><p>{text}</p><h2>{sub}</h2><p>More of {title}.</p></body></html>"
    )
    opf = """<?xml version="1.0" encoding="utf-8"?>
<package xmlns="http://www.idpf.org/2007/opf" version="3.0" unique-identifier="id">
 <metadata xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:title>The Sea Book</dc:title>
  <dc:identifier id="id">x</dc:identifier><dc:language>en</dc:language></metadata>
 <manifest>
  <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>
  <item id="c2" href="text/ch2.xhtml" media-type="application/xhtml+xml"/>
  <item id="c1" href="text/ch1.xhtml" media-type="application/xhtml+xml"/>
 </manifest>
 <spine><itemref idref="c1"/><itemref idref="c2"/></spine>
</package>"""
    nav = (
        '<html xmlns="http://www.w3.org/1999/xhtml" xmlns:epub="http://www.idpf.org/2007/ops"><body>'
        '<nav epub:type="toc"><ol><li><a href="text/ch1.xhtml">Tides</a></li>'
        '<li><a href="text/ch2.xhtml#start">Knots and ropes</a></li></ol></nav></body></html>'
    )
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mimetype", "application/epub+zip", compress_type=zipfile.ZIP_STORED)
        z.writestr(
            "META-INF/container.xml",
            '<?xml version="1.0"?><container version="1.0" xmlns="urn:oasis:names:tc:opendocument:xmlns:container">'
            '<rootfiles><rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>'
            "</rootfiles></container>",
        )
        z.writestr("OEBPS/content.opf", opf, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr("OEBPS/nav.xhtml", nav, compress_type=zipfile.ZIP_DEFLATED)
        z.writestr(
            "OEBPS/text/ch1.xhtml",
            chapter.format(title="Tides", text="High water comes twice a day.", sub="Spring tides"),
            compress_type=zipfile.ZIP_DEFLATED,
        )
        z.writestr(
            "OEBPS/text/ch2.xhtml",
            chapter.format(title="Knots", text="A bowline makes a fixed loop.", sub="Hitches"),
            compress_type=zipfile.ZIP_DEFLATED,
        )
    return path


HTML = """<!DOCTYPE html><html><head><title>Removing packages</title>
<style>body { color: red; } .secret-style {}</style><script>var secretScript = 1;</script></head>
<body><nav><a href="/">Home</a> <a href="/x">NavigationLink</a></nav>
<h1>Package management</h1><p>Packages are   installed with
apt.</p>
<h2>Removing a package</h2><p>To remove a package <em>and</em> its configuration files, use
<code class="command">apt purge</code>.</p>
<pre>$ apt purge foo
    Reading package lists...</pre>
<table><tr><th>command</th><th>keeps config</th></tr><tr><td>remove</td><td>yes</td></tr></table>
<div role="navigation">Next chapter</div><noscript>Enable JS</noscript>
</body></html>"""

MARKDOWN = """# Boat log

Notes on the boat.

## Engine

Oil every fifty hours.

```sh
# not a heading: a shell comment
ls
```

Sails
-----

Stored dry.
"""


def _mail(subject: str = "Dinner on Friday", attach: bytes | None = None) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "Ann Lee <ann@example.org>"
    m["To"] = "me@example.org"
    m["Date"] = "Sat, 05 Dec 2026 10:00:00 +0000"
    m["Subject"] = subject
    m.set_content("Dinner is at eight at the harbour restaurant.\n")
    if attach is not None:
        m.add_attachment(attach, maintype="application", subtype="pdf", filename="menu.pdf")
    return m


# -- PDF -----------------------------------------------------------------------------------------
def test_pdf_pages_headings_and_running_headers(tmp_path):
    path = _manual_pdf(tmp_path / "manual.pdf")
    seen = []
    doc = extract(path, progress=lambda done, total: seen.append((done, total)))
    assert doc.kind == "pdf"
    assert seen[-1] == (4, 4)
    assert {p.page for p in doc.parts} == {1, 2, 3, 4}
    for n in range(1, 5):
        text = " ".join(" ".join(p.text for p in doc.parts if p.page == n).split())
        assert f"page{n}word" in text
        assert "fifty hours of running" in text
        assert "ACME Boat Manual" not in text  # the running header, on every page
        assert f"Page {n}" not in text  # the footer
    oil = [p for p in doc.parts if p.heading == "Chapter 3 Maintenance part 3 > 3.1 Engine oil"]
    assert oil and oil[0].page == 3 and oil[0].heading_start
    assert "A second paragraph" in oil[0].text
    assert "\n\nA second paragraph" in oil[0].text  # a paragraph break kept as a blank line


def test_pdf_streams_page_by_page(tmp_path):
    path = _manual_pdf(tmp_path / "manual.pdf", pages=6)
    stream = iter_parts(path)
    assert stream.kind == "pdf"
    first = next(iter(stream))
    assert first.page == 1


def test_pdf_encrypted(tmp_path):
    with pytest.raises(DocumentError, match="^encrypted: needs a password$"):
        extract(_encrypted_pdf(tmp_path / "locked.pdf"))


def test_pdf_image_only(tmp_path):
    with pytest.raises(DocumentError, match=r"^no text layer \(scanned\?\)$"):
        extract(_image_pdf(tmp_path / "scan.pdf"))


def test_pdf_truncated(tmp_path):
    whole = _manual_pdf(tmp_path / "whole.pdf").read_bytes()
    cut = tmp_path / "cut.pdf"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DocumentError, match="^truncated or damaged PDF"):
        extract(cut)
    junk = tmp_path / "junk.pdf"
    junk.write_bytes(b"%PDF-1.4\n" + b"\x00garbage" * 100 + b"\n%%EOF\n")
    with pytest.raises(DocumentError, match="^truncated or damaged PDF"):
        extract(junk)


def test_ligatures_become_letters():
    assert fix_ligatures("ﬁle ﬂow oﬀ eﬃcient") == "file flow off efficient"


# -- DOCX, EPUB ----------------------------------------------------------------------------------
def test_docx_headings_and_table(tmp_path):
    doc = extract(_docx(tmp_path / "notes.docx"))
    assert doc.kind == "docx" and doc.title == "Boat notes"
    by_heading = {p.heading: p for p in doc.parts}
    src = by_heading["Boat notes > Installation > From source"]
    assert src.heading_start and src.page is None
    assert "Build the hull" in src.text
    assert "part | count | price\noar | 2 | 40 EUR" in src.text
    assert "Reef early" in by_heading["Boat notes > Sailing"].text


def test_docx_zip_bomb(tmp_path, monkeypatch):
    """A DOCX whose document.xml inflates far past the cap is refused before it is inflated."""
    monkeypatch.setattr("localsym.documents._zip.MAX_UNPACKED_BYTES", 8 << 20)
    bomb = tmp_path / "bomb.docx"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", "<Types/>")
        with z.open("word/document.xml", "w") as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(40):
                f.write(chunk)
    assert bomb.stat().st_size < 200_000
    with pytest.raises(DocumentError, match="^refused: would unpack to 40 MiB .*zip bomb"):
        extract(bomb)


def test_docx_damaged(tmp_path):
    bad = tmp_path / "bad.docx"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("word/document.xml", "not xml")
    with pytest.raises(DocumentError, match="^damaged DOCX"):
        extract(bad)
    cut = tmp_path / "cut.docx"
    cut.write_bytes(_docx(tmp_path / "x.docx").read_bytes()[:3000])
    with pytest.raises(DocumentError, match="^truncated or damaged DOCX"):
        extract(cut)


def test_epub_spine_order_and_chapter_titles(tmp_path):
    doc = extract(_epub(tmp_path / "sea.epub"))
    assert doc.kind == "epub" and doc.title == "The Sea Book"
    # each chapter headed by its title in the table of contents; its own <h1> not said twice
    assert [p.heading for p in doc.parts] == [
        "Tides",
        "Tides > Spring tides",
        "Knots and ropes > Knots",
        "Knots and ropes > Knots > Hitches",
    ]
    assert all(p.heading_start for p in doc.parts)
    assert doc.parts[0].text == "Tides\n\nHigh water comes twice a day."
    assert "bowline" in doc.parts[2].text
    assert doc.text.index("High water") < doc.text.index("bowline")  # spine order, not manifest order


def test_epub2_ncx_titles(tmp_path):
    """An EPUB 2 names its chapters in toc.ncx, not in a nav document."""
    src = _epub(tmp_path / "three.epub")
    out = tmp_path / "two.epub"
    ncx = (
        '<ncx xmlns="http://www.daisy.org/z3986/2005/ncx/"><navMap>'
        '<navPoint id="a"><navLabel><text>Tidal streams</text></navLabel><content src="text/ch1.xhtml"/></navPoint>'
        '<navPoint id="b"><navLabel><text>Ropes</text></navLabel><content src="text/ch2.xhtml"/></navPoint>'
        "</navMap></ncx>"
    )
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename == "OEBPS/content.opf":
                data = (
                    data.replace(b'properties="nav"', b"")
                    .replace(b"<spine>", b'<spine toc="ncx">')
                    .replace(
                        b"</manifest>",
                        b'<item id="ncx" href="toc.ncx" media-type="application/x-dtbncx+xml"/></manifest>',
                    )
                )
            zout.writestr(info, data)
        zout.writestr("OEBPS/toc.ncx", ncx)
    doc = extract(out)
    assert [p.heading for p in doc.parts][::2] == ["Tidal streams > Tides", "Ropes > Knots"]


# -- HTML, Markdown ------------------------------------------------------------------------------
def test_html_text_headings_and_what_is_dropped(tmp_path):
    path = tmp_path / "page.html"
    path.write_text(HTML)
    doc = extract(path)
    assert doc.kind == "html" and doc.title == "Removing packages"
    text = doc.text
    for gone in ("secretScript", "secret-style", "NavigationLink", "Next chapter", "Enable JS", "<code"):
        assert gone not in text
    assert "Packages are installed with apt." in text
    rm = next(p for p in doc.parts if p.heading == "Package management > Removing a package")
    assert rm.heading_start
    assert "its configuration files, use apt purge." in rm.text
    assert "$ apt purge foo\n    Reading package lists..." in rm.text  # <pre> verbatim
    assert "command | keeps config\nremove | yes" in rm.text


def test_html_one_50mb_line(tmp_path):
    """One 50 MB line: a text node past libxml2's 10 MB limit, then a line of many small tags."""
    big = tmp_path / "big.html"
    big.write_bytes(b"<html><body><h1>Big</h1><p>" + b"word " * 10_000_000 + b"</p></body></html>")
    t = time.perf_counter()
    doc = extract(big)
    assert doc.text.count("word") == 10_000_000
    many = tmp_path / "many.html"
    many.write_bytes(b"<html><body>" + b"<p>a <b>b</b></p>" * 300_000 + b"</body></html>")
    parts = list(iter_parts(many))
    assert sum(len(p.text) for p in parts) > 1_000_000
    assert max(len(p.text) for p in parts) < 100_000  # a long section goes out in bounded parts
    assert time.perf_counter() - t < 20


def test_markdown_sections(tmp_path):
    path = tmp_path / "log.md"
    path.write_text(MARKDOWN)
    doc = extract(path)
    assert doc.kind == "markdown" and doc.title == "Boat log"
    assert [p.heading for p in doc.parts] == ["Boat log", "Boat log > Engine", "Boat log > Sails"]
    assert "# not a heading" in doc.parts[1].text  # inside a code fence: not a heading
    assert doc.parts[2].text.startswith("Sails\n-----")


# -- mail ----------------------------------------------------------------------------------------
def test_eml_with_a_pdf_attachment(tmp_path):
    pdf = _manual_pdf(tmp_path / "menu.pdf", pages=2).read_bytes()
    path = tmp_path / "dinner.eml"
    path.write_bytes(_mail(attach=pdf).as_bytes())
    doc = extract(path)
    assert doc.kind == "mail" and doc.title == "Dinner on Friday"
    msg = doc.parts[0]
    assert msg.heading == "Ann Lee <ann@example.org> · Sat, 05 Dec 2026 10:00:00 +0000 · Dinner on Friday"
    assert "To: me@example.org" in msg.text and "Dinner is at eight" in msg.text
    att = [p for p in doc.parts[1:] if p.page == 2]
    assert att[0].heading == msg.heading + " > menu.pdf > Chapter 2 Maintenance part 2 > 2.1 Engine oil"
    assert "page2word" in " ".join(att[0].text.split())


def test_eml_html_body(tmp_path):
    m = EmailMessage()
    m["From"], m["Subject"] = "shop@example.org", "Your order"
    m.set_content("<html><body><style>p{}</style><p>Order <b>42</b> ships on Monday.</p></body></html>", subtype="html")
    path = tmp_path / "order.eml"
    path.write_bytes(m.as_bytes())
    doc = extract(path)
    assert doc.parts[0].heading == "shop@example.org · Your order"
    assert doc.parts[0].text.endswith("Order 42 ships on Monday.")


def test_mbox_message_by_message(tmp_path):
    locked = _encrypted_pdf(tmp_path / "locked.pdf").read_bytes()
    path = tmp_path / "Inbox"
    with open(path, "wb") as f:
        for m in [_mail("First"), _mail("Second, with From in the body", attach=locked), _mail("Troisième dîner")]:
            f.write(b"From ann@example.org Sat Dec  5 10:00:00 2026\n")
            body = m.as_bytes().replace(b"\nDinner is at", b"\nFrom the harbour: dinner is at")
            f.write(body.replace(b"\nFrom ", b"\n>From ") + b"\n")  # mboxrd quoting
    assert document_kind(path, path.read_bytes()[:8000]) == "mail"
    doc = extract(path)
    subjects = [p.heading.rsplit(" · ", 1)[-1] for p in doc.parts]
    assert subjects == ["First", "Second, with From in the body", "Troisième dîner"]  # RFC 2047 decoded
    assert "[attachment menu.pdf: encrypted: needs a password]" in doc.parts[1].text
    assert "\nFrom the harbour: dinner is at eight" in doc.parts[2].text  # unquoted


# -- the walker ----------------------------------------------------------------------------------
def test_walk_lists_documents_and_a_truncated_pdf(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    _manual_pdf(folder / "manual.pdf")
    _docx(folder / "notes.docx")
    _epub(folder / "sea.epub")
    (folder / "page.html").write_text(HTML)
    (folder / "log.md").write_text(MARKDOWN)
    whole = (folder / "manual.pdf").read_bytes()
    (folder / "cut.pdf").write_bytes(whole[: len(whole) // 2])
    (folder / "blob.bin").write_bytes(b"\0\1\2" * 100)
    r = walk(folder)
    names = sorted(p.name for p in r.files)
    assert names == ["cut.pdf", "log.md", "manual.pdf", "notes.docx", "page.html", "sea.epub"]
    assert [(p.name, why) for p, why in r.skipped] == [("blob.bin", "binary")]
    with pytest.raises(DocumentError, match="^truncated or damaged PDF"):
        extract(folder / "cut.pdf")


def test_document_kind():
    assert document_kind(Path("a.pdf"), b"") == "pdf"
    assert document_kind(Path("noext"), b"%PDF-1.7\n") == "pdf"
    assert document_kind(Path("a.txt"), b"hello") is None
    assert document_kind(Path("a.py"), b"import os") is None
    assert document_kind(Path("saved"), b"<!DOCTYPE html><html>") == "html"
    assert document_kind(Path("a.zip"), b"PK\x03\x04" + b"\0" * 60) is None
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("mimetype", "application/epub+zip")
    assert document_kind(Path("book"), buf.getvalue()) == "epub"


def test_document_is_plain_data():
    d = Document("markdown")
    assert d.parts == [] and d.text == "" and d.title is None


def test_measure_pdf_against_pdftotext(tmp_path):
    from localsym.documents.measure import measure_pdf

    r = measure_pdf(_manual_pdf(tmp_path / "m.pdf", pages=3), reps=1)
    assert r["pages"] == 3 and r["localsym"]["pages_s"] > 0 and r["pdfium_plain"]["chars"] > 0
    if r["pdftotext"] is not None:  # poppler-utils installed
        assert r["word_recall"] > 0.8 and r["word_precision"] > 0.95
