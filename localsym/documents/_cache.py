"""Extracted text kept by the document's content hash, so reloading an unchanged file (in
this session or any other) reads no PDF page again.

One gzip'd JSON file per document under the cache folder, named by the hash of the file's
bytes and the readers' version (a better reader makes old entries miss, never wrong). Each
holds a format version and a checksum of its payload: a damaged or foreign entry is a miss,
overwritten by the next extraction. Writing is best effort (a full disk or a read-only cache
folder costs a re-extraction next time, never the load).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
import zlib
from pathlib import Path

from localsym.documents._types import Document, Part

FORMAT = 1
# bump when a reader's output changes (its text, pages or headings): cached text from the
# older readers is then not used
READERS_VERSION = 1


class ExtractionCache:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, digest: str) -> Path:
        return self.root / digest[:2] / f"{digest}-r{READERS_VERSION}.json.gz"

    def get(self, digest: str) -> Document | None:
        """The document extracted from the bytes whose SHA-256 is ``digest``, or None."""
        try:
            raw = gzip.decompress(self._path(digest).read_bytes())
            rec = json.loads(raw)
            if not isinstance(rec, dict) or rec.get("format") != FORMAT or rec.get("digest") != digest:
                return None
            body = rec["body"]
            if hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest() != rec.get("checksum"):
                return None
            parts = [
                Part(str(p["text"]), p.get("page"), p.get("heading"), bool(p.get("heading_start")))
                for p in body["parts"]
            ]
            return Document(str(body["kind"]), parts, body.get("title"))
        except (OSError, EOFError, ValueError, KeyError, TypeError, zlib.error):
            return None  # missing, damaged (gzip's errors are OSError/EOFError/zlib's) or foreign

    def put(self, digest: str, doc: Document) -> bool:
        """Keep ``doc`` for ``digest``; False when it could not be written."""
        body = {
            "kind": doc.kind,
            "title": doc.title,
            "parts": [
                {"text": p.text, "page": p.page, "heading": p.heading, "heading_start": p.heading_start}
                for p in doc.parts
            ],
        }
        checksum = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
        data = gzip.compress(
            json.dumps({"format": FORMAT, "digest": digest, "checksum": checksum, "body": body}).encode(), 6
        )
        path = self._path(digest)
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return True
        except OSError:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return False
