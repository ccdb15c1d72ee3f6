"""The session index in SQLite (WAL): documents, blocks with their exact tokens, messages.

Schema upgrades are named functions keyed on ``PRAGMA user_version``, applied in order.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localsym.errors import BudgetError, LocalsymError
from localsym.memory import lexical

log = logging.getLogger("localsym.memory")


def _v1() -> str:
    return """
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE docs (
            id INTEGER PRIMARY KEY, source TEXT NOT NULL, kind TEXT NOT NULL,
            content_sha TEXT NOT NULL, n_tokens INTEGER NOT NULL, created REAL NOT NULL,
            active INTEGER NOT NULL DEFAULT 1, complete INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE blocks (
            id INTEGER PRIMARY KEY, doc_id INTEGER NOT NULL REFERENCES docs(id),
            idx INTEGER NOT NULL, key TEXT NOT NULL, pos0 INTEGER NOT NULL,
            n_tokens INTEGER NOT NULL, tokens BLOB NOT NULL, created REAL NOT NULL);
        CREATE INDEX blocks_doc ON blocks(doc_id, idx);
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY, role TEXT NOT NULL, content TEXT NOT NULL,
            created REAL NOT NULL, doc_id INTEGER);
    """


def _v2() -> str:
    # representative keys for attention-native selection (memory/attention_keys.py), f16
    return "ALTER TABLE blocks ADD COLUMN attn BLOB;"


def _v3() -> str:
    # a checksum of each block's exact tokens: bit rot there would silently change a needle
    return "ALTER TABLE blocks ADD COLUMN tokens_crc INTEGER;"


def _v4() -> str:
    # opening a session is O(1) in its size: what retrieval needs is persisted as blocks are
    # sealed instead of recomputed on every open. A block's sketch is a row of the session's
    # sketch file (``sketch_row``, with a checksum); its distinct tokens are postings here,
    # with each token's document frequency over the active document blocks; ``indexed``
    # says its postings are in. Line coordinates (first and last line of the block in its
    # file) let an answer name its sources. Blocks from before v4 have NULLs: they are
    # indexed from their exact tokens on first use.
    return """
        ALTER TABLE blocks ADD COLUMN sketch_row INTEGER;
        ALTER TABLE blocks ADD COLUMN sketch_crc INTEGER;
        ALTER TABLE blocks ADD COLUMN indexed INTEGER;
        ALTER TABLE blocks ADD COLUMN line0 INTEGER;
        ALTER TABLE blocks ADD COLUMN line1 INTEGER;
        CREATE TABLE postings (token INTEGER NOT NULL, block_id INTEGER NOT NULL,
            PRIMARY KEY (token, block_id)) WITHOUT ROWID;
        CREATE INDEX postings_block ON postings(block_id);
        CREATE TABLE token_df (token INTEGER PRIMARY KEY, df INTEGER NOT NULL);
    """


def _v5() -> str:
    # questions in words: each document block's words in an FTS5 table (memory/lexical.py),
    # ``lexed`` saying they are in; what a block holds as its header names it (``label``:
    # definitions or a section) and, for paged documents, its pages. Blocks from before v5
    # are indexed from their exact tokens on first use.
    return f"""
        ALTER TABLE blocks ADD COLUMN label TEXT;
        ALTER TABLE blocks ADD COLUMN page0 INTEGER;
        ALTER TABLE blocks ADD COLUMN page1 INTEGER;
        ALTER TABLE blocks ADD COLUMN lexed INTEGER;
        {lexical.SCHEMA.format(name=LEX_TABLE)};
    """


def _v6() -> str:
    # the semantic signal (memory/semantic.py): each document block's static embedding, f16,
    # with a checksum. Blocks from before v6 get theirs from their exact tokens on first use.
    return """
        ALTER TABLE blocks ADD COLUMN sem BLOB;
        ALTER TABLE blocks ADD COLUMN sem_crc INTEGER;
    """


MIGRATIONS = [_v1, _v2, _v3, _v4, _v5, _v6]
LEX_TABLE = "lexical"
_ACTIVE_DOCS = "FROM blocks b JOIN docs d ON d.id = b.doc_id WHERE d.active = 1 AND d.kind != 'turn'"


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise LocalsymError(f"session index v{version} is newer than this localsym (v{len(MIGRATIONS)}): upgrade")
    if version == len(MIGRATIONS):
        return  # up to date: opening writes nothing
    for i, step in enumerate(MIGRATIONS[version:], start=version + 1):
        # one transaction per upgrade: the schema and its version number move together
        db.executescript(f"BEGIN IMMEDIATE; {step()} PRAGMA user_version = {i}; COMMIT;")


def _raise_if_full(path: Path, e: BaseException, check_only: bool = False) -> bool:
    """A full disk (ENOSPC, EFBIG, SQLite's "database or disk is full", or its I/O error
    when WAL's shared-memory file cannot grow) is one line."""
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    full = full or (isinstance(e, sqlite3.Error) and ("disk is full" in str(e) or "disk I/O error" in str(e)))
    if full and not check_only:
        raise BudgetError(f"cannot write {path}: the disk is full; free some disk space") from None
    return full


def _checked(v: bytes | None, crc: int | None) -> bytes | None:
    """A stored vector, or None where it is missing or fails its checksum (rebuilt then)."""
    return v if v is not None and crc == zlib.crc32(v) else None


@dataclass
class BlockRow:
    id: int
    doc_id: int
    idx: int
    key: str
    pos0: int
    tokens: np.ndarray  # int32
    kind: str
    source: str
    attn: bytes | None = None  # representative keys, f16 [layers, kv heads, reps, head_dim]
    lines: tuple[int, int] | None = None  # first and last line of its file it covers (1-based)
    label: str | None = None  # what it holds, as its header names it (definitions, a section)
    pages: tuple[int, int] | None = None  # first and last page, for paged documents

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class IndexDB:
    """A session's SQLite index. A new one is built in a temp file and renamed into place,
    so a ``session.db`` that exists always went through its first migration: an empty or
    unreadable one is damage, reported in one line, never a fresh empty session."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self._lexical: lexical.LexicalIndex | None = None
        # blocks whose stored tokens failed their checksum, seen so far: id -> (kind, source, idx)
        self.damaged: dict[int, tuple[str, str, int]] = {}
        if not path.exists():
            if readonly:
                raise LocalsymError(f"{path}: no such session index")
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
            try:
                db = sqlite3.connect(str(tmp), isolation_level=None)
                try:
                    _migrate(db)
                finally:
                    db.close()
                os.chmod(tmp, 0o600)
                os.replace(tmp, path)
            except (OSError, sqlite3.Error) as e:
                _raise_if_full(path, e)
                raise
            finally:
                tmp.unlink(missing_ok=True)
        elif path.stat().st_size == 0:
            raise LocalsymError(
                f"{path} is empty (damaged): move it aside to start this session over "
                f"(its blocks stay in the shared block cache)"
            )
        try:
            try:
                self._connect(readonly, exclusive=False)
            except sqlite3.OperationalError as e:
                if readonly or _raise_if_full(path, e, check_only=True) is False:
                    raise
                # a full disk: WAL's shared-memory index cannot be created, so read through a
                # private one (the session lock makes this process its only user anyway)
                self.db.close()
                self._connect(readonly, exclusive=True)
                log.info("%s: the disk is full: opened with a private WAL index (reads only)", path)
        except sqlite3.DatabaseError as e:
            _raise_if_full(path, e)
            raise LocalsymError(
                f"{path} is damaged ({e}): move it aside to start this session over "
                f"(its blocks stay in the shared block cache)"
            ) from None

    def _connect(self, readonly: bool, exclusive: bool) -> None:
        path = self.path
        uri = f"file:{path}?mode=ro" if readonly else str(path)
        self.db = sqlite3.connect(uri, uri=readonly, check_same_thread=False, isolation_level=None)
        if exclusive:
            self.db.execute("PRAGMA locking_mode=EXCLUSIVE")  # before the first read: no -shm file
        self.db.execute("PRAGMA busy_timeout = 5000")
        if not readonly:
            # each a no-op, writing nothing, on a session already in WAL mode and up to date
            if self.db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            _migrate(self.db)
        self.db.execute("SELECT 1 FROM meta LIMIT 1").fetchone()

    def close(self) -> None:
        self.db.close()

    # -- meta ---------------------------------------------------------------------------------
    def get(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else default

    def set(self, key: str, value) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, json.dumps(value)))

    # -- documents and blocks -----------------------------------------------------------------------
    def add_doc(self, source: str, kind: str, content_sha: str, n_tokens: int) -> int:
        cur = self.db.execute(
            "INSERT INTO docs(source, kind, content_sha, n_tokens, created) VALUES (?,?,?,?,?)",
            (source, kind, content_sha, n_tokens, time.time()),
        )
        assert cur.lastrowid is not None  # set by every INSERT
        return int(cur.lastrowid)

    def _retire(self, d: int) -> None:
        """Document ``d`` leaves use: its blocks leave the pointer and lexical indexes."""
        self.db.execute(
            "UPDATE token_df SET df = df - (SELECT COUNT(*) FROM postings p JOIN blocks b "
            "ON b.id = p.block_id WHERE b.doc_id = ?1 AND p.token = token_df.token) "
            "WHERE token IN (SELECT p.token FROM postings p JOIN blocks b ON b.id = p.block_id "
            "WHERE b.doc_id = ?1)",
            (d,),
        )
        self.db.execute("DELETE FROM postings WHERE block_id IN (SELECT id FROM blocks WHERE doc_id = ?)", (d,))
        self.db.execute("UPDATE blocks SET indexed = NULL WHERE doc_id = ?", (d,))
        self.db.execute(
            f"DELETE FROM {LEX_TABLE} WHERE rowid IN (SELECT id FROM blocks WHERE doc_id = ? AND lexed = 1)", (d,)
        )
        self.db.execute("UPDATE blocks SET lexed = NULL WHERE doc_id = ?", (d,))
        self.db.execute("UPDATE docs SET active = 0 WHERE id = ?", (d,))

    def complete_doc(
        self, doc_id: int, source: str, kind: str, n_tokens: int | None = None, partial: bool = False
    ) -> int:
        """All of a document's blocks are in: it now replaces any older version of itself
        (a file reloaded after an edit, or after a load that was killed half-way).
        ``n_tokens``: its size, when only known at the end (a streamed document); ``partial``:
        its load was stopped part-way: what came in stays (unless a whole older version is in
        use: that one stays), and its content hash is marked so that loading the file again
        reads it again."""
        with self._tx():
            self.db.execute("UPDATE docs SET complete = 1 WHERE id = ?", (doc_id,))
            if n_tokens is not None:
                self.db.execute("UPDATE docs SET n_tokens = ? WHERE id = ?", (n_tokens, doc_id))
            if partial:
                self.db.execute("UPDATE docs SET content_sha = 'partial:' || content_sha WHERE id = ?", (doc_id,))
            if kind == "file":
                old = [
                    r[0]
                    for r in self.db.execute(
                        "SELECT id FROM docs WHERE source = ? AND id != ? AND kind = 'file' AND active = 1",
                        (source, doc_id),
                    )
                ]
                whole = self.db.execute(
                    "SELECT 1 FROM docs WHERE source = ? AND id != ? AND kind = 'file' AND active = 1 "
                    "AND complete = 1 AND content_sha NOT LIKE 'partial:%'",
                    (source, doc_id),
                ).fetchone()
                if partial and whole:
                    # stopped while reloading a changed file: the whole older version stays
                    # in use; what came in waits in the block cache for the next load
                    self._retire(doc_id)
                    return 0
                for d in old:
                    self._retire(d)
                return len(old)
        return 0

    def add_block(
        self,
        doc_id: int,
        idx: int,
        key: str,
        pos0: int,
        tokens: list[int],
        attn: bytes | None = None,
        sketch: tuple[int, int] | None = None,
        lines: tuple[int, int] | None = None,
        postings: bool = False,
        label: str | None = None,
        pages: tuple[int, int] | None = None,
        words: tuple[str, str] | None = None,
        sem: bytes | None = None,
    ) -> int:
        """One block's row; ``sketch``: its (row, crc32) in the session's sketch file;
        ``postings``: also index its distinct tokens (document blocks), in the same
        transaction, so a block is selectable by its tokens exactly when its row exists;
        ``words``: its text and its file's name for the lexical index (same transaction);
        ``sem``: its semantic vector (f16 bytes)."""
        blob = np.asarray(tokens, np.int32).tobytes()
        row, crc = sketch if sketch is not None else (None, None)
        l0, l1 = lines if lines is not None else (None, None)
        p0, p1 = pages if pages is not None else (None, None)
        with self._tx():
            cur = self.db.execute(
                "INSERT INTO blocks(doc_id, idx, key, pos0, n_tokens, tokens, created, attn, tokens_crc, "
                "sketch_row, sketch_crc, indexed, line0, line1, label, page0, page1, lexed, sem, sem_crc) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    doc_id,
                    idx,
                    key,
                    pos0,
                    len(tokens),
                    blob,
                    time.time(),
                    attn,
                    zlib.crc32(blob),
                    row,
                    crc,
                    1 if postings else None,
                    l0,
                    l1,
                    label,
                    p0,
                    p1,
                    1 if words is not None else None,
                    sem,
                    None if sem is None else zlib.crc32(sem),
                ),
            )
            assert cur.lastrowid is not None  # set by every INSERT
            bid = int(cur.lastrowid)
            if postings:
                self._add_postings(bid, tokens)
            if words is not None:
                self.lexical.add(bid, words[0], words[1], (label,) if label else ())
        return bid

    # -- the lexical index ------------------------------------------------------------------------
    @property
    def lexical(self) -> lexical.LexicalIndex:
        if self._lexical is None:
            self._lexical = lexical.LexicalIndex(self.db, LEX_TABLE, create=False)
        return self._lexical

    def unlexed(self) -> list[int]:
        """Active document blocks whose words are not in the lexical index yet."""
        return [r[0] for r in self.db.execute(f"SELECT b.id {_ACTIVE_DOCS} AND b.lexed IS NULL ORDER BY b.id")]

    def lex_blocks(self, items: list[tuple[int, str, str, str | None]]) -> None:
        """Index blocks written before v5 (or after a rebuild): (id, text, path, label) each."""
        with self._tx():
            for bid, text, path, label in items:
                self.lexical.add(bid, text, path, (label,) if label else ())
            self.db.executemany("UPDATE blocks SET lexed = 1 WHERE id = ?", [(bid,) for bid, *_ in items])

    def lex_search(self, words: list[str], limit: int) -> list[tuple[int, float]]:
        """(block id, BM25 score) best first. A damaged lexical table is dropped and made
        again (every block is indexed anew from its exact tokens on the next question)."""
        try:
            return self.lexical.search(words, limit)
        except sqlite3.DatabaseError as e:
            if _raise_if_full(self.path, e, check_only=True) or "locked" in str(e):
                raise
            log.warning("%s: the lexical index is damaged (%s): rebuilt from the blocks' exact tokens", self.path, e)
            with self._tx():
                self.db.execute(f"DROP TABLE IF EXISTS {LEX_TABLE}")
                self.db.execute(lexical.SCHEMA.format(name=LEX_TABLE))
                self.db.execute("UPDATE blocks SET lexed = NULL")
            return []

    def _add_postings(self, bid: int, tokens: list[int] | np.ndarray) -> None:
        uniq = [(int(t), bid) for t in np.unique(np.asarray(tokens, np.int64))]
        self.db.executemany("INSERT OR IGNORE INTO postings(token, block_id) VALUES (?, ?)", uniq)
        self.db.executemany(
            "INSERT INTO token_df(token, df) VALUES (?, 1) ON CONFLICT(token) DO UPDATE SET df = df + 1",
            [(t,) for t, _ in uniq],
        )

    def index_block(self, bid: int, tokens: np.ndarray, sketch: tuple[int, int] | None) -> None:
        """Index a block written before v4 (or whose sketch row was damaged), from its tokens."""
        with self._tx():
            if self.db.execute("SELECT indexed FROM blocks WHERE id = ?", (bid,)).fetchone()[0] is None:
                self._add_postings(bid, tokens)
            self.db.execute(
                "UPDATE blocks SET indexed = 1, sketch_row = coalesce(?, sketch_row), "
                "sketch_crc = coalesce(?, sketch_crc) WHERE id = ?",
                (*(sketch or (None, None)), bid),
            )

    def _tx(self) -> _Tx:
        return _Tx(self.db)

    def transaction(self) -> _Tx:
        """One write transaction around several calls (theirs join it)."""
        return _Tx(self.db)

    def _row(self, r: tuple) -> BlockRow | None:
        blob = r[5]
        if (r[9] is not None and zlib.crc32(blob) != r[9]) or len(blob) != 4 * r[10]:
            if r[0] not in self.damaged:
                log.warning(
                    "%s: the stored tokens of block %d of %s are damaged: block left out", self.path, r[2], r[7]
                )
            self.damaged[r[0]] = (r[6], r[7], r[2])
            return None
        lines = (r[11], r[12]) if r[11] is not None else None
        pages = (r[14], r[15]) if r[14] is not None else None
        toks = np.frombuffer(blob, np.int32)
        return BlockRow(r[0], r[1], r[2], r[3], r[4], toks, r[6], r[7], r[8], lines, r[13], pages)

    _COLS = (
        "SELECT b.id, b.doc_id, b.idx, b.key, b.pos0, b.tokens, d.kind, d.source, b.attn, b.tokens_crc, "
        "b.n_tokens, b.line0, b.line1, b.label, b.page0, b.page1 FROM blocks b JOIN docs d ON d.id = b.doc_id "
    )

    def blocks(self, kind: str | None = None) -> list[BlockRow]:
        """Active blocks in order (``kind``: "turn" for turns, "doc" for the rest); one whose
        stored tokens fail their checksum is left out (logged): its text can no longer be
        trusted, and it is never used as if it could."""
        where = {None: "", "turn": " AND d.kind = 'turn'", "doc": " AND d.kind != 'turn'"}[kind]
        rows = self.db.execute(self._COLS + f"WHERE d.active = 1{where} ORDER BY b.doc_id, b.idx").fetchall()
        return [b for b in map(self._row, rows) if b is not None]

    def rows(self, ids: list[int]) -> dict[int, BlockRow]:
        """Blocks by id (tokens checked; damaged ones left out, logged)."""
        out: dict[int, BlockRow] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = self._COLS + f"WHERE b.id IN ({','.join('?' * len(part))})"
            for r in self.db.execute(q, part).fetchall():
                row = self._row(r)
                if row is not None:
                    out[row.id] = row
        return out

    def doc_blocks(self, doc_id: int) -> list[BlockRow]:
        rows = self.db.execute(self._COLS + "WHERE b.doc_id = ? ORDER BY b.idx", (doc_id,)).fetchall()
        return [b for b in map(self._row, rows) if b is not None]

    def doc_block_totals(self) -> tuple[int, int]:
        """(blocks, tokens) of the active document blocks, without reading them."""
        n, t = self.db.execute(f"SELECT COUNT(*), COALESCE(SUM(b.n_tokens), 0) {_ACTIVE_DOCS}").fetchone()
        return int(n), int(t)

    def catalog(self) -> dict[str, np.ndarray | list]:
        """What selection needs of every active document block, without their tokens: ids,
        documents, sizes, keys, sketch rows and checksums, whether indexed, attention keys,
        semantic vectors."""
        rows = self.db.execute(
            "SELECT b.id, b.doc_id, b.n_tokens, b.sketch_row, b.sketch_crc, b.indexed, b.key, b.attn, "
            f"b.sem, b.sem_crc {_ACTIVE_DOCS} ORDER BY b.doc_id, b.idx"
        ).fetchall()
        cols = list(zip(*rows)) if rows else [()] * 10

        def ints(c: tuple, missing: int = -1) -> np.ndarray:
            return np.array([missing if v is None else v for v in c], np.int64)

        return {
            "ids": ints(cols[0]),
            "doc_ids": ints(cols[1]),
            "n_tokens": ints(cols[2]),
            "sketch_rows": ints(cols[3]),
            "sketch_crcs": ints(cols[4]),
            "indexed": ints(cols[5], 0).astype(bool),
            "keys": list(cols[6]),
            "attn": list(cols[7]),
            # a semantic vector whose checksum fails reads as missing: rebuilt from the tokens
            "sem": [_checked(v, c) for v, c in zip(cols[8], cols[9])],
        }

    def sems(self, ids: list[int]) -> list[bytes | None]:
        """Blocks' semantic vectors by id, in that order (a missing or damaged one: None)."""
        got: dict[int, bytes | None] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            q = f"SELECT id, sem, sem_crc FROM blocks WHERE id IN ({','.join('?' * len(part))})"
            got.update((bid, _checked(v, c)) for bid, v, c in self.db.execute(q, part))
        return [got.get(i) for i in ids]

    def set_sem(self, items: list[tuple[int, bytes]]) -> None:
        """Semantic vectors of blocks written before v6 (or found damaged): (id, f16 bytes) each."""
        with self._tx():
            self.db.executemany(
                "UPDATE blocks SET sem = ?, sem_crc = ? WHERE id = ?", [(v, zlib.crc32(v), bid) for bid, v in items]
            )

    def df(self, tokens: list[int]) -> dict[int, int]:
        out: dict[int, int] = {}
        for i in range(0, len(tokens), 500):
            part = tokens[i : i + 500]
            q = f"SELECT token, df FROM token_df WHERE df > 0 AND token IN ({','.join('?' * len(part))})"
            out.update(self.db.execute(q, part).fetchall())
        return out

    def postings(self, token: int) -> list[int]:
        """Ids of the active document blocks holding ``token``."""
        return [r[0] for r in self.db.execute("SELECT block_id FROM postings WHERE token = ?", (token,))]

    def sources_by_doc(self) -> dict[int, str]:
        """Every document's id -> its source (a few rows a file: read whole)."""
        return dict(self.db.execute("SELECT id, source FROM docs").fetchall())

    def doc_sources(self) -> dict[str, str]:
        """Completely ingested, active file sources -> their content sha."""
        return dict(
            self.db.execute(
                "SELECT source, content_sha FROM docs WHERE active = 1 AND complete = 1 AND kind = 'file'"
            ).fetchall()
        )

    def damaged_sources(self) -> frozenset[str]:
        """Active file sources holding a block whose stored tokens fail their checksum (a
        reload of the unchanged file writes them again)."""
        out: dict[str, None] = {}
        for source, blob, crc, n in self.db.execute(
            "SELECT d.source, b.tokens, b.tokens_crc, b.n_tokens FROM blocks b JOIN docs d ON d.id = b.doc_id "
            "WHERE d.active = 1 AND d.complete = 1 AND d.kind = 'file'"
        ):
            if source not in out and ((crc is not None and zlib.crc32(blob) != crc) or len(blob) != 4 * n):
                out[source] = None
        return frozenset(out)

    # -- messages -------------------------------------------------------------------------------------
    def add_message(self, role: str, content: str, doc_id: int | None = None) -> None:
        self.db.execute(
            "INSERT INTO messages(role, content, created, doc_id) VALUES (?,?,?,?)",
            (role, content, time.time(), doc_id),
        )

    def messages(self) -> list[dict]:
        rows = self.db.execute("SELECT role, content, created FROM messages ORDER BY id").fetchall()
        return [{"role": r[0], "content": r[1], "created": r[2]} for r in rows]


class _Tx:
    """One write transaction (the connection is in autocommit mode otherwise)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, *_: object) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        elif self.db.in_transaction:  # SQLite may have rolled back already (a full disk)
            self.db.execute("ROLLBACK")
