"""EPUB (2 and 3) with zipfile and lxml: chapters in spine order, each titled from the table of
contents (the EPUB 3 nav document, else the EPUB 2 NCX), its text read as HTML. No e-book
library: an EPUB is a zip of XHTML files and two small XML indexes."""

from __future__ import annotations

import posixpath
import zipfile
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

from localsym.documents._html import page_parts, parse
from localsym.documents._types import DocumentError, Part, PartStream, Progress, Source
from localsym.documents._zip import open_zip, read_member

_NS = {
    "c": "urn:oasis:names:tc:opendocument:xmlns:container",
    "opf": "http://www.idpf.org/2007/opf",
    "dc": "http://purl.org/dc/elements/1.1/",
    "ncx": "http://www.daisy.org/z3986/2005/ncx/",
}


def read(src: Source, progress: Progress | None = None) -> PartStream:
    """Read the container and the package document now; chapters stream."""
    z = open_zip(src, "EPUB")
    try:
        opf_path = _rootfile(z)
        opf = _xml(read_member(z, opf_path, "EPUB"), opf_path)
        base = posixpath.dirname(opf_path)
        title = opf.findtext(".//dc:title", default="", namespaces=_NS).strip() or None
        manifest: dict[str, tuple[str, str, str]] = {}  # id -> (path, media type, properties)
        for item in opf.iterfind(".//opf:manifest/opf:item", _NS):
            href = item.get("href")
            if item.get("id") and href:
                path = posixpath.normpath(posixpath.join(base, unquote(href.split("#", 1)[0])))
                manifest[item.get("id", "")] = (path, item.get("media-type", ""), item.get("properties", ""))
        spine_el = opf.find(".//opf:spine", _NS)
        if spine_el is None:
            raise DocumentError("damaged EPUB: no spine (reading order)")
        spine = [
            manifest[r.get("idref", "")][0] for r in spine_el.iterfind("opf:itemref", _NS) if r.get("idref") in manifest
        ]
        titles = _toc_titles(z, manifest, spine_el.get("toc"))
    except BaseException:
        z.close()
        raise
    return PartStream("epub", title, _parts(z, spine, titles, progress))


def _rootfile(z: zipfile.ZipFile) -> str:
    container = _xml(read_member(z, "META-INF/container.xml", "EPUB"), "META-INF/container.xml")
    rootfile = container.find(".//c:rootfile", _NS)
    if rootfile is None or not rootfile.get("full-path"):
        raise DocumentError("damaged EPUB: container.xml names no package document")
    return str(rootfile.get("full-path"))


def _xml(data: bytes, name: str) -> Any:
    """A small XML index, parsed without network access or entity expansion."""
    import lxml.etree

    parser = lxml.etree.XMLParser(resolve_entities=False, no_network=True, recover=True)
    try:
        root = lxml.etree.fromstring(data, parser=parser)
    except lxml.etree.XMLSyntaxError:
        root = None
    if root is None:
        raise DocumentError(f"damaged EPUB: {name} is not XML")
    return root


def _toc_titles(z: zipfile.ZipFile, manifest: dict[str, tuple[str, str, str]], ncx_id: str | None) -> dict[str, str]:
    """Chapter file -> its title in the table of contents (the first entry pointing at it)."""
    titles: dict[str, str] = {}
    nav = next((m for m in manifest.values() if "nav" in m[2].split()), None)
    if nav is not None:
        root = parse(read_member(z, nav[0], "EPUB"))
        base = posixpath.dirname(nav[0])
        for a in root.iter("a"):
            href, text = a.get("href"), " ".join("".join(a.itertext()).split())
            if href and text:
                path = posixpath.normpath(posixpath.join(base, unquote(href.split("#", 1)[0])))
                titles.setdefault(path, text)
    ncx = manifest.get(ncx_id or "") or next((m for m in manifest.values() if m[1] == "application/x-dtbncx+xml"), None)
    if not titles and ncx is not None:
        root = _xml(read_member(z, ncx[0], "EPUB"), ncx[0])
        base = posixpath.dirname(ncx[0])
        for point in root.iter(f"{{{_NS['ncx']}}}navPoint"):
            label = " ".join(point.findtext("ncx:navLabel/ncx:text", default="", namespaces=_NS).split())
            content = point.find("ncx:content", _NS)
            src = content.get("src") if content is not None else None
            if label and src:
                titles.setdefault(posixpath.normpath(posixpath.join(base, unquote(src.split("#", 1)[0]))), label)
    return titles


def _parts(z: zipfile.ZipFile, spine: list[str], titles: dict[str, str], progress: Progress | None) -> Iterator[Part]:
    with z:
        for i, path in enumerate(spine):
            yield from page_parts(read_member(z, path, "EPUB"), titles.get(path))
            if progress is not None:
                progress(i + 1, len(spine))
