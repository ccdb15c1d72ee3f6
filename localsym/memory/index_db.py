"""The session index in SQLite (WAL): documents, blocks with their exact tokens, messages.

Schema upgrades are named functions keyed on ``PRAGMA user_version``, applied in order.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localsym.errors import LocalsymError

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


MIGRATIONS = [_v1, _v2, _v3]


def _migrate(db: sqlite3.Connection) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise LocalsymError(f"session index v{version} is newer than this localsym (v{len(MIGRATIONS)}): upgrade")
    for i, step in enumerate(MIGRATIONS[version:], start=version + 1):
        # one transaction per upgrade: the schema and its version number move together
        db.executescript(f"BEGIN IMMEDIATE; {step()} PRAGMA user_version = {i}; COMMIT;")


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

    @property
    def n_tokens(self) -> int:
        return len(self.tokens)


class IndexDB:
    """A session's SQLite index. A new one is built in a temp file and renamed into place,
    so a ``session.db`` that exists always went through its first migration: an empty or
    unreadable one is damage, reported in one line, never a fresh empty session."""

    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
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
            finally:
                tmp.unlink(missing_ok=True)
        elif path.stat().st_size == 0:
            raise LocalsymError(
                f"{path} is empty (damaged): move it aside to start this session over "
                f"(its blocks stay in the shared block cache)"
            )
        try:
            uri = f"file:{path}?mode=ro" if readonly else str(path)
            self.db = sqlite3.connect(uri, uri=readonly, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA busy_timeout = 5000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                _migrate(self.db)
            self.db.execute("SELECT COUNT(*) FROM meta").fetchone()
        except sqlite3.DatabaseError as e:
            raise LocalsymError(
                f"{path} is damaged ({e}): move it aside to start this session over "
                f"(its blocks stay in the shared block cache)"
            ) from None

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

    def complete_doc(self, doc_id: int, source: str, kind: str) -> None:
        """All of a document's blocks are in: it now replaces any older version of itself
        (a file reloaded after an edit, or after a load that was killed half-way)."""
        self.db.execute("UPDATE docs SET complete = 1 WHERE id = ?", (doc_id,))
        if kind == "file":
            self.db.execute(
                "UPDATE docs SET active = 0 WHERE source = ? AND id != ? AND kind = 'file'", (source, doc_id)
            )

    def add_block(
        self, doc_id: int, idx: int, key: str, pos0: int, tokens: list[int], attn: bytes | None = None
    ) -> int:
        blob = np.asarray(tokens, np.int32).tobytes()
        cur = self.db.execute(
            "INSERT INTO blocks(doc_id, idx, key, pos0, n_tokens, tokens, created, attn, tokens_crc) "
            "VALUES (?,?,?,?,?,?,?,?,?)",
            (doc_id, idx, key, pos0, len(tokens), blob, time.time(), attn, zlib.crc32(blob)),
        )
        assert cur.lastrowid is not None  # set by every INSERT
        return int(cur.lastrowid)

    def blocks(self) -> list[BlockRow]:
        """Active blocks in order; one whose stored tokens fail their checksum is left out
        (logged): its text can no longer be trusted, and it is never used as if it could."""
        rows = self.db.execute(
            "SELECT b.id, b.doc_id, b.idx, b.key, b.pos0, b.tokens, d.kind, d.source, b.attn, b.tokens_crc, b.n_tokens "
            "FROM blocks b JOIN docs d ON d.id = b.doc_id WHERE d.active = 1 ORDER BY b.doc_id, b.idx"
        ).fetchall()
        out = []
        for r in rows:
            blob = r[5]
            if (r[9] is not None and zlib.crc32(blob) != r[9]) or len(blob) != 4 * r[10]:
                log.warning(
                    "%s: the stored tokens of block %d of %s are damaged: block left out", self.path, r[2], r[7]
                )
                continue
            out.append(BlockRow(r[0], r[1], r[2], r[3], r[4], np.frombuffer(blob, np.int32), r[6], r[7], r[8]))
        return out

    def doc_sources(self) -> dict[str, str]:
        """Completely ingested, active file sources -> their content sha."""
        return dict(
            self.db.execute(
                "SELECT source, content_sha FROM docs WHERE active = 1 AND complete = 1 AND kind = 'file'"
            ).fetchall()
        )

    # -- messages -------------------------------------------------------------------------------------
    def add_message(self, role: str, content: str, doc_id: int | None = None) -> None:
        self.db.execute(
            "INSERT INTO messages(role, content, created, doc_id) VALUES (?,?,?,?)",
            (role, content, time.time(), doc_id),
        )

    def messages(self) -> list[dict]:
        rows = self.db.execute("SELECT role, content, created FROM messages ORDER BY id").fetchall()
        return [{"role": r[0], "content": r[1], "created": r[2]} for r in rows]
