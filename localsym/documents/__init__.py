"""Text out of documents (PDF, DOCX, EPUB, HTML, Markdown, mail) with where each part came from.

One module a format, each behind ``read(source, progress) -> PartStream``; this package imports
nothing of the session, memory or runtime layers, and no format library until a file needs it.
"""

from localsym.documents._api import extract, iter_parts, read_source
from localsym.documents._cache import ExtractionCache
from localsym.documents._kind import KINDS, document_kind
from localsym.documents._types import (
    MAX_DOCUMENT_BYTES,
    Document,
    DocumentError,
    Part,
    PartStream,
    Progress,
)

__all__ = [
    "KINDS",
    "MAX_DOCUMENT_BYTES",
    "Document",
    "DocumentError",
    "ExtractionCache",
    "Part",
    "PartStream",
    "Progress",
    "document_kind",
    "extract",
    "iter_parts",
    "read_source",
]
