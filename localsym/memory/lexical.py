"""The lexical signal: a question's words against the blocks' words, ranked by BM25.

A question in words ("which function builds the multipart body?") shares no rare token
with the code it is about, but it shares *words* with its identifiers
(``_encode_files``, ``MultipartEncoder``, ``build_body``) and its file names. So a block's
words are its identifiers split into their parts (``get_connection_with_tls_context`` ->
get, connection, with, tls, context, and the whole), lowercased, plus the file path's
parts and the names of the definitions it sits in. SQLite's FTS5 (the session is SQLite
already) keeps them, stems them (``porter``) and ranks them with its ``bm25()``: opening
costs nothing, a query at a million tokens takes milliseconds, and the index lives and
dies with the session's other tables.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*|[0-9]+")
_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
MAX_TERM = 48  # a longer "word" is data (a hash, base64), not a name anyone asks about

# English function words, and words about the question rather than its subject ("which
# *function* in this *code* does the *following*"): they pick no block out, and an OR query
# over them would read the longest posting lists of the index for nothing
STOP = frozenset(
    """a about above after again all also am an and any are as at be because been before being
    below between both but by can could did do does doing done down during each either else
    etc few for from further had has have having he her here hers him his how i if in into is
    it its itself just may me might more most must my no nor not now of off on once only or
    other our out over own same shall she should so some such than that the their theirs them
    then there these they this those through to too under until up upon us very via was we
    were what when where whether which while who whom whose why will with within without would
    yes you your
    answer code following function functions method methods please tell""".split()
)


def split_identifier(word: str) -> list[str]:
    """The parts of an identifier, lowercased: ``HTTPAdapter`` -> http, adapter;
    ``proxyHeaders`` -> proxy, headers; ``parse_http2`` -> parse, http, 2."""
    return [p.lower() for seg in word.split("_") for p in _PARTS.findall(seg)]


def terms(text: str) -> list[str]:
    """Index words of ``text``: each identifier's parts, then the whole identifier when it has
    several (so ``get_connection`` is found by its name and by "connection")."""
    out: list[str] = []
    for m in _IDENT.finditer(text):
        w = m.group()
        if len(w) > MAX_TERM:
            continue
        parts = split_identifier(w)
        out += parts
        if len(parts) > 1:
            out.append("".join(parts))
    return out


def query_terms(text: str) -> list[str]:
    """A question's words, each once, without stop words."""
    return [t for t in dict.fromkeys(terms(text)) if t not in STOP and len(t) > 1]


def fts_query(words: Iterable[str]) -> str:
    """An FTS5 OR query; every word quoted (a word like ``or``/``near`` is then no operator)."""
    return " OR ".join(f'"{w}"' for w in words)


SCHEMA = "CREATE VIRTUAL TABLE IF NOT EXISTS {name} USING fts5(body, path, defs, tokenize = 'porter unicode61')"
WEIGHTS = (1.0, 1.5, 3.0)  # body, path, definitions: a name that says what a block defines counts most


class LexicalIndex:
    """Blocks' words in an FTS5 table of ``db`` (rowid = the block's id)."""

    def __init__(self, db: sqlite3.Connection, name: str = "lexical", create: bool = True) -> None:
        self.db, self.name = db, name
        if create:  # a session's table is made by its schema upgrade
            db.execute(SCHEMA.format(name=name))

    def add(self, rowid: int, text: str, path: str = "", defs: Sequence[str] = ()) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO {self.name}(rowid, body, path, defs) VALUES (?, ?, ?, ?)",
            (rowid, " ".join(terms(text)), " ".join(terms(path)), " ".join(terms(" ".join(defs)))),
        )

    def remove(self, rowids: Iterable[int]) -> None:
        self.db.executemany(f"DELETE FROM {self.name} WHERE rowid = ?", [(int(r),) for r in rowids])

    def search(self, words: Sequence[str], limit: int) -> list[tuple[int, float]]:
        """(rowid, score) best first; the score is BM25's, higher is better."""
        if not words:
            return []
        w = ", ".join(str(x) for x in WEIGHTS)
        rows = self.db.execute(
            f"SELECT rowid, -bm25({self.name}, {w}) AS s FROM {self.name} WHERE {self.name} MATCH ? "
            "ORDER BY s DESC LIMIT ?",
            (fts_query(words), limit),
        ).fetchall()
        return [(int(r), float(s)) for r, s in rows]
