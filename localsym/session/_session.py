"""A Session: open by name and model, load files or text, ask (a streamed turn), resume later.

Every face (CLI, TUI, server, benchmarks) goes through this class. A session's context is
a sequence of blocks of ``block_tokens`` tokens. Documents are encoded each against the
fixed system preamble (the sink) and their own earlier blocks, so a file's blocks depend on
nothing else in the session: they are content-addressed (a chain hash of model, cache
layout, sink and the file's tokens up to the block) and reused by any session of the same
model that loads the same file. The block store keeps them (warm in RAM, cold on disk);
the working set brings the ones a question needs back into llama.cpp's context.

One process at a time writes a session: a lock file beside its index; a second one gets
a one-line "session busy" error.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import hashlib
import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from localsym import config as config_file
from localsym import model_store, paths
from localsym.chunking import Chunk, chunk_file
from localsym.document_chunks import chunk_document
from localsym.documents import Document, DocumentError, ExtractionCache, Part, document_kind, extract, iter_parts
from localsym.errors import BudgetError, LocalsymError
from localsym.ingest import walk
from localsym.memory import semantic
from localsym.memory.block_store import BlockStore, Sealed
from localsym.memory.hot import N_SEQ
from localsym.memory.index_db import BlockRow, IndexDB
from localsym.memory.kv_quant import QuantPolicy, mix_summary
from localsym.memory.phrases import words
from localsym.memory.pinning import needle_like
from localsym.memory.query_probe import AttentionSignal
from localsym.memory.retrieval import StoredRetriever, short_path
from localsym.memory.working_set import Refresh, WorkingSet
from localsym.runtime.bridge import Cancelled
from localsym.runtime.engine import Engine, GenParams, GenStats, RunOptions
from localsym.runtime.limits import session_min_ctx
from localsym.runtime.model_info import model_info
from localsym.session._catalog import discard_new, is_set_aside, session_dir
from localsym.session._config import SessionConfig, resolve_config
from localsym.session._conversation import ConversationTurn
from localsym.session._frame import Frame
from localsym.session._oneshot import ollama_summary
from localsym.session._reports import LoadReport, Progress, SessionStatus, TurnStats

log = logging.getLogger("localsym.session")


def _next_key(prev: str, chunk: list[int], sep: bytes) -> str:
    """A block's content address: it hashes the key before it and the block's tokens, so a
    block's key names everything it was computed after."""
    return hashlib.sha256(prev.encode() + sep + repr(chunk).encode()).hexdigest()


def _chain_keys(root: str, chunks: list[list[int]], sep: bytes) -> list[str]:
    """Content addresses of consecutive blocks (``_next_key``)."""
    keys, h = [], root
    for c in chunks:
        h = _next_key(h, c, sep)
        keys.append(h)
    return keys


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class SessionBusy(LocalsymError):
    """Another process has the session open."""


def _full_disk(e: BaseException) -> bool:
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    msg = str(e)
    return isinstance(e, sqlite3.Error) and ("disk is full" in msg or "disk I/O error" in msg)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """A full disk while writing the session's index is one line, not a raw sqlite3 error
    (the write's transaction is rolled back: the session stays as it was)."""
    try:
        yield
    except (OSError, sqlite3.Error) as e:
        if _full_disk(e):
            raise BudgetError(f"cannot write {path}: the disk is full; free some disk space") from None
        raise


def _block_lines(detok, chunks: list[list[int]]) -> list[tuple[int, int]]:
    """Each block's first and last line of its file (1-based). A document's tokens start
    with a ``### source`` line, so the file's line k follows k newlines."""
    out, nl = [], 0
    for c in chunks:
        text = detok(c)
        inner = text[:-1] if text.endswith("\n") else text
        out.append((max(nl, 1), max(nl + inner.count("\n"), 1)))
        nl += text.count("\n")
    return out


# formats read as text as they are (their lines are what a person cites); the other
# document kinds are extracted (localsym.documents) and cited by page and section
_AS_TEXT = {"markdown"}
# a document file bigger than this is read, cut and loaded as it streams (bounded memory,
# Ctrl+C keeps what came in): held whole, its text, its chunks and their tokens as Python
# ints cost ~40x the file in RAM
STREAM_BYTES = 32 << 20
STREAM_GROUP_CHARS = 256 << 10  # text cut into blocks at a time while streaming


def _size(f: Path) -> int:
    try:
        return f.stat().st_size
    except OSError:
        return 0


def _read(f: Path) -> tuple[str, str | None]:
    """A file's text and its document kind (None: text or code, read as it is). A document's
    "text" here is its content hash: what tells an unchanged file from a changed one."""
    with open(f, "rb") as fh:
        head = fh.read(4096)
        kind = document_kind(f, head)
        if kind is None or kind in _AS_TEXT:
            return (head + fh.read()).decode("utf-8", "replace"), None
        h = hashlib.sha256(head)
        for piece in iter(lambda: fh.read(1 << 20), b""):
            h.update(piece)
    return f"{kind}:{h.hexdigest()}", kind


class Session:
    def __init__(
        self,
        name: str,
        engine: Engine,
        db: IndexDB,
        config: SessionConfig,
        model: str,
        model_id: str,
        lock: filelock.BaseFileLock,
        experts=None,
    ) -> None:
        self.name, self.engine, self.db, self.config = name, engine, db, config
        self.model, self.model_id = model, model_id
        self._lock, self.experts = lock, experts
        info = engine.info
        self.n_caches = 2 if info.sliding_window else 1
        # the frame at the session's creation date: a template that writes today's date
        # (Llama 3.x) would otherwise change every block's key from one day to the next
        created = db.get("created")
        self.frame = Frame.of(
            engine, config.system, datetime.datetime.fromtimestamp(created) if isinstance(created, float) else None
        )
        self.root_key = hashlib.sha256(
            f"{model_id}|{engine.plan.type_k}|{engine.plan.type_v}|{engine.plan.flash_attn}|"
            f"{config.block_tokens}|{config.ingest_window}|{self.frame.sink}|{config.kv_format}".encode()
        ).hexdigest()
        attn = AttentionSignal.for_model(engine.model, engine.plan.type_k)
        policy = QuantPolicy(fixed=None if config.kv_format == "adaptive" else config.kv_format)
        self._extracts = ExtractionCache(paths.cache_dir() / "documents")
        self.store = BlockStore(
            paths.data_dir() / "blocks" / model_id[:24],
            model_id,
            int(config.warm_mb * 2**20),
            int(config.cold_gb * 2**30),
            self.n_caches,
            info.n_head_kv,
            attn,
            policy,
        )
        # opening reads nothing in proportion to the session: the document blocks stay in
        # the index (their catalog, sketches and postings are read by the first question)
        self._docs: list[BlockRow] | None = None
        self._read_share = 0.0  # of the document being streamed in: how much was read
        self.last_load: LoadReport | None = None  # the last load's report, filled in as it goes (read after Ctrl+C)
        self._n_docs, self._doc_token_count = db.doc_block_totals()
        self.turns: list[BlockRow] = db.blocks("turn")
        sketches = db.path.with_name("sketches.lsx")
        lm = engine.model

        def piece(t: int) -> str:
            return lm.piece(t).decode("utf-8", "replace")

        self.working = WorkingSet(
            engine.ctx,
            self.n_caches,
            self.store,
            self.frame.sink,
            self.frame.close,
            attn,
            self._pinned,
            self._doc_rows,
            lambda shape: StoredRetriever(db, sketches, shape, piece, lm.tokenize),
        )
        if hasattr(engine.ctx, "on_evicted"):  # a shared context gave this session's room away
            engine.ctx.on_evicted = self.working.reset
        self._closed = False
        self._dirty = False  # something was written: close records the totals
        self.exchanges = 0  # stored since it opened: an attached chat sees another client's turn by it
        self._damage_said: set[int] = set()  # damaged blocks a turn has reported already
        self.default_stop: tuple[str, ...] = ()  # stop strings the model's store asks for (Ollama)

    # -- opening and closing -------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        name: str,
        model: str | None = None,
        opts: RunOptions | None = None,
        config: SessionConfig | None = None,
        overrides: dict | None = None,
    ) -> Session:
        """Open (or create) a session. Settings come from ``resolve_config`` (defaults, the
        config file, what the session stored, then ``overrides``); ``config`` replaces them
        all. ``opts`` is not modified."""
        d = session_dir(name)
        if is_set_aside(name) and not (d / "session.db").exists():
            raise LocalsymError(f"{name!r}: names with '~' are kept for set-aside histories; choose another")
        created = not d.exists()
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        # closed from any thread; private like every file of a session
        lock = filelock.FileLock(str(d / "session.lock"), mode=0o600, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise SessionBusy(f"session {name!r} is busy: another localsym process has it open") from None
        db = None
        existing = True
        try:
            existing = (d / "session.db").exists()
            db = IndexDB(d / "session.db")
            stored_model = db.get("model")
            if existing and stored_model and model and model != stored_model:
                raise LocalsymError(f"session {name!r} belongs to model {stored_model!r}, not {model!r}")
            model = model or stored_model
            if model is None:
                from localsym.catalog import default_model

                model = default_model()
            path = model_store.resolve(model)
            ollama = ollama_summary(path, True)
            if config is not None:
                cfg, to_store = config, config.__dict__
            else:
                stored = db.get("config") or {}
                suggested = {"system": ollama["system"]} if ollama and ollama["system"] else {}
                cfg, _, to_store = resolve_config(
                    stored if isinstance(stored, dict) else {},
                    config_file.load().get("memory", {}),
                    overrides or {},
                    suggested,
                )
            o = replace(opts or RunOptions())
            o.n_seq_max = max(o.n_seq_max, N_SEQ)
            floor = session_min_ctx(cfg.block_tokens)
            if o.n_ctx and 0 < o.n_ctx < floor:  # `-c 1`: raised (the faces say so), never an abort
                log.info("session %s: -c %d raised to %d", name, o.n_ctx, floor)
                o.n_ctx = floor
            model_id = db.get("model_id") or model_store.identity(path)
            experts = usage = None
            info = model_info(path)
            if info.is_moe:  # watch routing, learn it and prefetch experts while chatting
                from localsym.experts.live import LiveExperts, learned_store, learned_usage

                usage = learned_usage(model_id, info.n_layer, info.n_expert)
                experts = LiveExperts(path, info, learned_store(model_id))
            try:
                engine = Engine(path, o, observer=experts.observer if experts else None, expert_usage=usage)
            except BaseException:
                if experts is not None:
                    experts.close()
                raise
            try:
                # only what changed is written: opening a session to read it needs no disk space
                with _writing(db.path):
                    for k, v in (("model", model), ("model_id", model_id), ("config", to_store)):
                        if db.get(k) != v:
                            db.set(k, v)
                    if not existing:
                        db.set("created", time.time())
                sess = cls(name, engine, db, cfg, model, model_id, lock, experts)
                sess.default_stop = tuple(ollama["stop"]) if ollama else ()
                return sess
            except BaseException:
                engine.close()
                if experts is not None:
                    experts.close()
                raise
        except BaseException:
            if db is not None:
                db.close()
            if not existing:  # a session this call began (a missing model): nothing of it is left
                discard_new(d)
            lock.release()
            if not existing and created:
                with contextlib.suppress(OSError):
                    (d / "session.lock").unlink(missing_ok=True)
                    d.rmdir()
            raise

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.store.close()  # waits for seals in flight
            if self._dirty:
                with _writing(self.db.path):
                    self.db.set("updated", time.time())
                    self.db.set("total_tokens", self.total_tokens)
        finally:
            self.db.close()
            if self.working.attn is not None:
                self.working.attn.close()
            self.engine.close()
            if self.experts is not None:
                self.experts.close()
            self._lock.release()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------------
    @property
    def docs(self) -> list[BlockRow]:
        """The document blocks with their tokens, read on first use (asking does not)."""
        if self._docs is None:
            self._docs = self.db.blocks("doc")
        return self._docs

    @property
    def total_tokens(self) -> int:
        return self._doc_token_count + sum(b.n_tokens for b in self.turns)

    def chat_template(self) -> str | None:
        """The model's chat template (Jinja source); None for a base model."""
        return self.engine.template.source if self.engine.template.present else None

    def messages(self) -> list[dict]:
        return self.db.messages()

    def status(self) -> SessionStatus:
        info, plan = self.engine.info, self.engine.plan
        # a session whose room in a shared context went to another holds nothing there now
        hot = 0 if getattr(self.engine.ctx, "evicted", False) else self.working.hot.n_tokens
        u = self.store.usage()
        summary = {
            "name": info.name,
            "architecture": info.architecture,
            "n_params": info.n_params,
            "file_type": info.file_type,
            "n_ctx_train": info.n_ctx_train,
            "n_layer": info.n_layer,
            "kv_bytes_per_token": info.kv_bytes_per_token(),
            "n_expert": info.n_expert,
            "chat_template": info.chat_template is not None,
        }
        return SessionStatus(
            self.name,
            self.model,
            str(info.path),
            "GPU" if plan.n_gpu_layers else "CPU",
            self.total_tokens,
            self._n_docs + len(self.turns),
            hot,
            self.engine.ctx.n_ctx,
            hot * info.kv_bytes_per_token(),
            u["warm_blocks"],
            u["warm_bytes"],
            u["warm_budget"],
            u["cold_bytes"],
            u["cold_budget"],
            summary,
            plan.as_dict(),
        )

    def quant_mix(self) -> dict:
        """Layer-tensors per format in each tier, and the pinned blocks."""
        return self.store.quant_mix(b.key for b in (*self.docs, *self.turns))

    def memory_report(self) -> str:
        mix = self.quant_mix()
        return (
            f"formats (layers): warm {mix_summary(mix['warm'])}; cold {mix_summary(mix['cold'])}; "
            f"{mix['pinned_blocks']} blocks pinned at q8 (they hold keys or long numbers)"
        )

    def save(self) -> None:
        """Every block is on disk as it is sealed; this records the session's totals now."""
        with _writing(self.db.path):
            self.db.set("total_tokens", self.total_tokens)
            self.db.set("updated", time.time())

    def measure_blocks(self, reps: int = 5) -> dict[str, float]:
        """For benchmarks: median ms to bring one full-size document block back into the
        context (from the warm tier, from its cold file, recomputed), and its f16 bytes."""
        row = next((b for b in self.docs if b.n_tokens == self.config.block_tokens), None)
        if row is None:
            raise LocalsymError("no full-size document block to measure: load more text first")
        with self.held():
            return self.working.measure(row, reps)

    def held(self) -> contextlib.AbstractContextManager[object]:
        """Keep this session's room in a context it shares with other sessions (``serve
        --parallel``) through several calls; nothing where the session has its own."""
        # a cancel meant for an answer that had already ended (each operation clears it as it
        # starts): cleared first, or the working set a shared context lost is not brought
        # back (``on_evicted``, inside the hold) and the session fails until it is cleared
        self.engine.ctx.clear_cancel()
        return self.engine.ctx.hold()

    # -- helpers for the floors below ---------------------------------------------------------------
    def _pinned(self, tokens: np.ndarray) -> bool:
        return needle_like(self.engine.model.detokenize(tokens.tolist()))

    def _doc_rows(self, row: BlockRow) -> list[BlockRow]:
        return self.db.doc_blocks(row.doc_id)

    # -- ingest -------------------------------------------------------------------------------------
    def _doc_tokens(self, text: str, source: str) -> list[int]:
        return self.engine.model.tokenize(f"### {source}\n{text.rstrip()}\n")

    def ingest_text(
        self,
        text: str,
        source: str = "text",
        kind: str = "text",
        progress: Progress | None = None,
        report: LoadReport | None = None,
        tokens: np.ndarray | None = None,
        chunks: Iterable[Chunk] | None = None,
        name: str | None = None,
    ) -> LoadReport:
        """Add a document; ``tokens``: its tokens when the caller has them already;
        ``chunks``: its blocks, cut where its structure says (``load``), each with its
        header: a list, or an iterator for a document streamed as it is read (never held
        whole; stopped part-way, what was loaded stays, marked partial); ``name``: how the
        blocks' headers name the file (its words are indexed).
        Each block is sealed by the store's worker while the next one decodes; a block is
        acknowledged (its index row written) once its file is on disk, and the document
        counts as loaded once all of its blocks are."""
        with self.held():
            return self._ingest(text, source, kind, progress, report or LoadReport(), tokens, chunks, name)

    def _ingest(
        self,
        text: str,
        source: str,
        kind: str,
        progress: Progress | None,
        report: LoadReport,
        tokens: np.ndarray | None,
        chunks: Iterable[Chunk] | None,
        name: str | None,
        fresh: bool = True,
    ) -> LoadReport:
        t0 = time.perf_counter()
        eng, B = self.engine, self.config.block_tokens
        if fresh:  # a cancel meant for an answer that had already ended (a load's files share one)
            eng.ctx.clear_cancel()
        items: Iterable[tuple[list[int], tuple[int, int] | None, str | None, tuple[int, int] | None]]
        streamed = chunks is not None and not isinstance(chunks, list)
        if chunks is not None:
            items = (([int(t) for t in c.tokens], c.lines, c.label or None, c.pages) for c in chunks)
            n_tokens = 0 if streamed else sum(len(c.tokens) for c in chunks)
        else:
            toks = tokens.tolist() if tokens is not None else self._doc_tokens(text, source)
            split = [toks[i : i + B] for i in range(0, len(toks), B)]
            items = zip(split, _block_lines(eng.model.detokenize, split), [None] * len(split), [None] * len(split))
            n_tokens = len(toks)
        short = name or short_path(source)
        selector = self.working.selector
        assert isinstance(selector, StoredRetriever)  # a session's index is persisted
        self._dirty = True
        with _writing(self.db.path):
            doc_id = self.db.add_doc(source, kind, _sha(text), n_tokens)
        P = len(self.frame.sink)
        window = min(eng.ctx.n_ctx - P - B - 16, self.config.ingest_window)
        sim: list[int] = []  # the doc's blocks in the window, by chunk index
        # a block (its row before the index has one: tokens, key, position, coordinates), kept
        # while it waits for its index row or sits in the window: a streamed document (a 1 GB
        # mbox) is never held whole
        held: dict[int, BlockRow] = {}
        rows: list[BlockRow] = []  # a streamed document keeps none: the index is read again after it
        vectors: list[np.ndarray] = []
        n_rows, n_row_tokens = 0, 0
        pending: list[tuple[int, Future[Sealed] | None]] = []  # (chunk, seal) in order

        def acknowledge(upto: int) -> None:
            nonlocal n_rows, n_row_tokens
            while pending and (len(pending) > upto or pending[0][1] is None or pending[0][1].done()):
                j, fut = pending[0]  # taken off once its row is written: a second Ctrl+C leaves no hole
                r = held[j]
                part = r.tokens.tolist()
                attn = None
                if fut is not None:
                    sealed = self.store.done(fut)
                    attn = sealed.attn
                    report.seal_seconds += sealed.seconds
                    report.seals.append((sealed.seconds, sealed.block.f16_bytes))
                elif self.working.attn is not None:
                    # the model's shared key store has every computed block's keys: a reload
                    # reads no block to get them
                    attn = self.store.attention_keys(r.key)
                ((vec, sk),) = selector.persist([r.tokens])  # its sketch row first, then its index row
                words_ = (eng.model.detokenize(part), short)
                sem = semantic.vectors([words_[0]])
                with _writing(self.db.path):
                    bid = self.db.add_block(
                        doc_id,
                        j,
                        r.key,
                        r.pos0,
                        part,
                        attn,
                        sk,
                        r.lines,
                        True,
                        r.label,
                        r.pages,
                        words_,
                        None if sem is None else sem[0].tobytes(),
                    )
                pending.pop(0)
                n_rows, n_row_tokens = n_rows + 1, n_row_tokens + len(part)
                if not streamed:
                    rows.append(replace(r, id=bid, attn=attn))
                    vectors.append(vec)
                if j not in sim:
                    del held[j]

        h = self.root_key
        stop: BaseException | None = None
        try:
            for j, (chunk, lines_j, label_j, pages_j) in enumerate(items):
                key = h = _next_key(h, chunk, b"|")
                while sim and sum(held[i].n_tokens for i in sim) + len(chunk) > window:
                    gone = sim.pop(0)
                    if not any(gone == p[0] for p in pending):
                        del held[gone]
                pos0 = P + sum(held[i].n_tokens for i in sim)
                tokens = np.asarray(chunk, np.int32)
                held[j] = BlockRow(0, doc_id, j, key, pos0, tokens, kind, source, None, lines_j, label_j, pages_j)
                if not self.store.has(key):
                    self.working.arrange_window([held[i] for i in sim])
                    seg = self.working.hot.decode(key, chunk)
                    assert seg.start == pos0
                    fut = self.store.seal(key, self.working.blob_of(seg.start, seg.n), pos0, self._pinned(tokens))
                    pending.append((j, fut))
                    report.computed_blocks += 1
                else:
                    pending.append((j, None))
                    report.reused_blocks += 1
                sim.append(j)
                acknowledge(2)
                report.tokens += len(chunk)
                report.blocks += 1
                if progress:
                    progress(report.tokens, -1, source)
        except BaseException as e:
            # stopped (Ctrl+C, or damage further into the file) part-way through a streamed
            # document: what was sealed stays, marked partial, so that loading the file again
            # goes on from there (its blocks come back from the block cache); anything else is
            # dropped with its document
            if not streamed or not (pending or n_rows):
                raise
            stop = e
        acknowledge(0)
        with _writing(self.db.path):
            replaced = self.db.complete_doc(
                doc_id, source, kind, n_tokens=n_row_tokens if streamed else None, partial=stop is not None
            )
        if replaced or streamed:
            self._n_docs, self._doc_token_count = self.db.doc_block_totals()
            if streamed:
                self._docs = None  # read again when asked for
            elif self._docs is not None:
                self._docs = [b for b in self._docs if not (b.source == source and b.doc_id != doc_id)] + rows
            self.working.index([], fresh=True)
        else:
            self._n_docs += n_rows
            self._doc_token_count += n_row_tokens
            if self._docs is not None:
                self._docs += rows
            self.working.index(rows, vectors=vectors)
        if stop is not None:
            self.working.hot.truncate(1)
            report.partial.append((source, n_rows))
            log.warning("%s: stopped after %d blocks; they are kept, and loading it again goes on", source, n_rows)
            if isinstance(stop, KeyboardInterrupt):
                raise Cancelled() from None
            raise stop
        self.working.hot.truncate(1)
        report.seconds += time.perf_counter() - t0
        return report

    def load(
        self,
        path: str | Path,
        progress: Progress | None = None,
        no_ignore: bool = False,
        reading: Progress | None = None,
    ) -> LoadReport:
        """Ingest a file or a tree. Unchanged files already in the session are skipped;
        changed ones replace their older version; their blocks come from the block cache
        when this model has seen the same content before. Each file is cut where its
        structure says (``chunking``), its blocks named by their path relative to ``path``.
        ``no_ignore``: load what ignore files (.gitignore...) exclude too. ``reading``:
        (pages done, pages, file) while a document's text is extracted (a PDF page by page),
        before ``progress`` counts tokens."""
        with self.held():
            return self._load(path, progress, no_ignore, reading)

    def _load(
        self, path: str | Path, progress: Progress | None, no_ignore: bool, reading: Progress | None
    ) -> LoadReport:
        found = walk(path, self.config.max_file_bytes, no_ignore=no_ignore)
        report = self.last_load = LoadReport(skipped=[(str(p), why) for p, why in found.skipped])
        report.ignored = sorted(found.ignored.items())
        root = Path(path).expanduser()
        base = root.resolve() if root.is_dir() else None
        known = self.db.doc_sources()
        damaged = self.db.damaged_sources()  # an unchanged file whose stored tokens rotted: read again
        # (source, text, name, chunks) of new or changed files: the bar's total is exact, but
        # for a streamed document (its chunks an iterator)
        todo: list[tuple[str, str, str, list[Chunk] | Iterator[Chunk]]] = []
        tokenize = self.engine.model.tokenize
        for f in found.files:
            try:
                text, doc_kind = _read(f)
            except OSError as e:
                report.skipped.append((str(f), f"unreadable ({e.strerror})"))
                continue
            source = os.fsencode(f).decode("utf-8", "replace")
            if known.get(source) != _sha(text) or source in damaged:
                name = os.fsencode(f.relative_to(base) if base else f.name).decode("utf-8", "replace")
                chunks: list[Chunk] | Iterator[Chunk]
                if doc_kind is None:
                    chunks = chunk_file(text, name, tokenize, self.config.block_tokens)
                elif _size(f) > STREAM_BYTES:
                    report.files += 1  # read, cut and loaded as it streams (errors show up then)
                    todo.append((source, text, name, self._streamed_chunks(f, name, tokenize)))
                    continue
                else:
                    try:
                        doc = self._extract(f, text.split(":", 1)[1], name, reading)
                        chunks = chunk_document(doc, name, tokenize, self.config.block_tokens)
                    except DocumentError as e:
                        report.skipped.append((str(f), str(e)))
                        continue
                    if not chunks:
                        report.skipped.append((str(f), f"no text in this {doc_kind}"))
                        continue
                report.files += 1
                for c in chunks:  # int32 while waiting: a list of Python ints costs 9x the memory
                    c.tokens = np.asarray(c.tokens, np.int32)
                todo.append((source, text, name, chunks))
            else:
                report.files += 1
        total = sum(len(c.tokens) for *_, cs in todo if isinstance(cs, list) for c in cs)
        streamed_done = 0  # tokens of the streamed documents loaded so far: not in ``total``
        for source, text, name, chunks in todo:
            if self.engine.ctx.cancelled:  # Ctrl+C while the files were read: stop before the next
                raise Cancelled()
            at = report.tokens
            if not isinstance(chunks, list):  # a streamed document: its size is told by how much was read
                try:
                    chunks = itertools.chain([next(chunks)], chunks)
                except StopIteration:
                    report.files -= 1
                    report.skipped.append((source, "no text in this document"))
                    continue
                except DocumentError as e:
                    report.files -= 1
                    report.skipped.append((source, str(e)))
                    continue

            def told(
                d: int,
                _t: int,
                s: str,
                at: int = at,
                before: int = streamed_done,
                listed: bool = isinstance(chunks, list),
            ) -> None:
                assert progress is not None
                if listed:
                    progress(d, total + before, s)
                else:  # its tokens to come, estimated from the share of the file read so far
                    share = self._read_share
                    this = int((d - at) / share) if share > 0 else d - at
                    progress(d, max(total + before + this, d), s)

            n_blocks = report.blocks
            try:
                self._ingest(text, source, "file", told if progress else None, report, None, chunks, name, False)
            except DocumentError as e:  # damage further into a streamed document: what came in stays
                kept = report.blocks - n_blocks
                report.skipped.append(
                    (source, f"{e} (stopped there: {kept} blocks before it kept)" if kept else str(e))
                )
                if not kept:
                    report.files -= 1
            if not isinstance(chunks, list):
                streamed_done += report.tokens - at
        if todo:
            with _writing(self.db.path):
                self.db.set("total_tokens", self.total_tokens)
        return report

    def _streamed_chunks(self, f: Path, name: str, tokenize: Callable[[str], list[int]]) -> Iterator[Chunk]:
        """A big document's blocks as it is read (a 1 GB mbox message by message, a long PDF
        page by page), cut a few hundred KB of text at a time: never held whole. Not kept in
        the extraction cache (a reload reads it again; its blocks come from the block cache)."""

        def share(done: int, total: int) -> None:
            self._read_share = done / total if total else 1.0

        self._read_share = 0.0
        stream = iter_parts(f, share)

        def cut(group: list[Part]) -> list[Chunk]:
            return chunk_document(Document(stream.kind, group, stream.title), name, tokenize, self.config.block_tokens)

        group: list[Part] = []
        size = 0
        for part in stream:
            group.append(part)
            size += len(part.text)
            if size >= STREAM_GROUP_CHARS:
                yield from cut(group)
                group, size = [], 0
        if group:
            yield from cut(group)

    def _extract(self, f: Path, digest: str, name: str, reading: Progress | None) -> Document:
        """The document's text: from the extraction cache when any session read these bytes
        before, else extracted (and kept there)."""
        doc = self._extracts.get(digest)
        if doc is None:
            doc = extract(f, (lambda done, total: reading(done, total, name)) if reading else None)
            if not self._extracts.put(digest, doc):
                log.info("extraction cache not written for %s", name)
        return doc

    # -- asking ---------------------------------------------------------------------------------------
    def ask(
        self,
        question: str,
        params: GenParams | None = None,
        raw: bool = False,
        refresh: bool = True,
        suffix: str | None = None,
    ) -> Turn:
        """A turn: iterate it for the answer's pieces; its ``stats`` fill in as it runs. The
        turn is finished (the KV made whole, the exchange stored) when it is read to the
        end or closed, whichever comes first: a caller that stops early still leaves a
        consistent session.

        ``raw``: the question is a completion prompt, sent without the chat turn's framing
        (base models asked in completion form). ``refresh``: choose the working set again
        while answering, when the answer names a key the question did not (``_Watch``).
        ``suffix``: fill in the middle: ``question`` is the text before the gap and this the
        text after it, sent as the model's own markers, ``[FIM_PRE] question [FIM_SUF] suffix
        [FIM_MID]`` (llama.cpp's infill order); raw prompts only, and only on a model that
        has the markers."""
        if suffix is not None:
            if not raw:
                raise LocalsymError("a suffix goes with a raw prompt (fill in the middle), not a chat question")
            if self.engine.model.fim is None:
                if suffix.strip():
                    raise LocalsymError("this model has no fill-in-the-middle tokens: a suffix cannot be sent to it")
                suffix = None  # nothing after the gap: a plain completion, as any model does it
        if not question.strip() and not (suffix and suffix.strip()):
            raise LocalsymError("empty question")
        params = params or GenParams()
        if self.default_stop:
            params = replace(
                params, stop=tuple(params.stop) + tuple(s for s in self.default_stop if s not in params.stop)
            )
        # a grammar's state lives in the sampler: no refresh, which would restart it mid-answer
        return Turn(self, question, params, raw, refresh and not params.grammar, suffix)

    def ask_conversation(
        self, messages: list[dict[str, Any]], params: GenParams | None = None, tools: list[dict] | None = None
    ) -> ConversationTurn:
        """A whole conversation rendered by the model's own chat template (OpenAI-shaped
        messages: ``tool_calls`` on assistant turns, ``tool`` turns; ``tools`` becomes the
        template's ``tools`` variable), answered beside the session's memory: it neither
        reads nor stores any (see ``_conversation``). Raises LocalsymError when the template
        cannot render it."""
        params = params or GenParams()
        if self.default_stop:
            params = replace(
                params, stop=tuple(params.stop) + tuple(s for s in self.default_stop if s not in params.stop)
            )
        return ConversationTurn(self, messages, params, tools)

    def _damage_notes(self) -> list[str]:
        """The damage met since the last call, said once: blocks left out (their stored
        tokens fail their checksum) and blocks rebuilt (their stored KV was damaged)."""
        new = [(bid, v) for bid, v in self.db.damaged.items() if bid not in self._damage_said]
        self._damage_said.update(bid for bid, _ in new)
        repaired, self.working.repaired = self.working.repaired, []
        return _damage_notes_for([v for _, v in new], repaired)

    def cancel(self) -> None:
        """Stop a running answer between tokens (callable from another thread)."""
        self.engine.ctx.cancel()

    def _store_turn(self, question: str, answer: str, turn: list[int], start: int) -> None:
        B = self.config.block_tokens
        chunks = [turn[j : j + B] for j in range(0, len(turn), B)]
        keys = _chain_keys(self.turns[-1].key if self.turns else self.root_key, chunks, b"|turn|")
        sealing = []
        # the transient turn run becomes block segments, so the next question can keep them
        for j, chunk, h in zip(range(0, len(turn), B), chunks, keys):
            pos0 = start + j
            sealing.append(
                (
                    j // B,
                    h,
                    pos0,
                    chunk,
                    self.store.seal(h, self.working.blob_of(pos0, len(chunk)), pos0, self._pinned(np.asarray(chunk))),
                )
            )
            self.working.adopt(h, pos0, len(chunk))
        for *_, fut in sealing:
            self.store.done(fut)  # every block file on disk (a full disk: one line, nothing recorded)
        new = []
        # the exchange is recorded in one transaction: all of it, or (a full disk) none of it
        with _writing(self.db.path), self.db.transaction():
            doc_id = self.db.add_doc("chat", "turn", hashlib.sha256(repr(turn).encode()).hexdigest(), len(turn))
            for idx, key, pos0, chunk, _ in sealing:
                bid = self.db.add_block(doc_id, idx, key, pos0, chunk)
                new.append(BlockRow(bid, doc_id, idx, key, pos0, np.asarray(chunk, np.int32), "turn", "chat"))
            self.db.complete_doc(doc_id, "chat", "turn")
            self.db.add_message("user", question, doc_id)
            self.db.add_message("assistant", answer, doc_id)
            self.db.set("total_tokens", self.total_tokens + len(turn))
            self.db.set("updated", time.time())
        self.turns += new
        self.exchanges += 1


class Turn:
    """One question and its answer, streamed. Iterate for text pieces; ``stats`` holds the
    turn's numbers (complete once it is finished); ``close()`` (or leaving a ``with``
    block, or reading to the end) finishes it."""

    def __init__(
        self,
        session: Session,
        question: str,
        params: GenParams,
        raw: bool,
        refresh: bool = True,
        suffix: str | None = None,
    ) -> None:
        self.session, self.question, self.params, self.raw = session, question, params, raw
        self.suffix = suffix
        self.refresh = refresh
        self.stats = TurnStats()
        self._gen: Generator[str, None, None] | None = None
        self._finished = False

    def __iter__(self) -> Iterator[str]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    def text(self) -> str:
        """Read the whole answer."""
        return "".join(self)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()  # runs the generator's finally: the turn is finished there
        self._finished = True

    def __enter__(self) -> Turn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> Generator[str, None, None]:
        with self.session.held():  # a shared context: nobody takes this session's room mid-turn
            yield from self._answer()

    def _answer(self) -> Generator[str, None, None]:
        s, p, st = self.session, self.params, self.stats
        eng, fr = s.engine, s.frame
        t0 = time.perf_counter()
        # a raw prompt is the client's own template: its special tokens (<|im_start|>, FIM) are
        # control tokens; a chat question is text, whatever it spells
        q_ids = eng.model.tokenize(self.question, parse_special=self.raw)
        if self.suffix is not None and eng.model.fim is not None:
            pre, suf, mid = eng.model.fim
            q_ids = [pre, *q_ids, suf, *eng.model.tokenize(self.suffix, parse_special=True), mid]
        q_toks = q_ids if self.raw else fr.user_prefix + q_ids + fr.user_suffix
        eng.ctx.clear_cancel()
        try:
            ws = s.working.arrange_for(
                q_ids,
                len(q_toks) + p.max_tokens + len(fr.answer_end),
                s.config.working_set_tokens,
                s.turns,
                s.config.recent_tokens,
                s.config.block_tokens,
            )
        except Cancelled:
            st.cancelled, st.stop_reason = True, "cancelled"
            s.working.hot.truncate(1)
            return
        st.restored_blocks, st.reinjected_blocks, st.recomputed_blocks = ws.restored, ws.reinjected, ws.recomputed
        st.select_ms, st.probe_ms = ws.select_ms, ws.probe_ms
        st.sources = _sources(ws.sources, ws.signals)
        st.blocks_in_working_set = len(ws.docs) + len(ws.recent)
        turn_start = s.working.hot.end
        watch = _Watch(s, q_ids) if self.refresh else None
        prefix: list[int] = []  # answer tokens generated before the latest refresh
        pieces: list[str] = []
        decoded, decode_s = 0, 0.0  # decode steps and seconds of the parts a refresh ended
        gen = GenStats()
        it: Iterator[str] | None = None
        try:
            while True:
                gen = GenStats()
                part = replace(p, max_tokens=p.max_tokens - len(prefix))
                it = eng.generate(q_toks + prefix, turn_start, part, seq=0, stats=gen)
                t_part = t_tok = time.perf_counter()
                refresh: Refresh | None = None
                stopped = cancelled = False
                for piece in it:
                    if not pieces:
                        st.ttft_s = time.perf_counter() - t0
                    pieces.append(piece)
                    yield piece
                    t_tok = time.perf_counter()
                    if prefix and p.stop and any(x in "".join(pieces) for x in p.stop):
                        stopped = True  # a stop string across a refresh, which the engine cannot see
                        break
                    reason = watch.due(prefix + gen.tokens) if watch is not None else None
                    if watch is not None and reason is not None and not eng.ctx.cancelled:
                        try:
                            refresh = watch.refresh(q_ids, prefix + gen.tokens, reason)
                        except Cancelled:  # stopped while blocks came in: complete the set, then stop
                            eng.ctx.clear_cancel()
                            s.working.settle()
                            cancelled = True
                            break
                        if refresh is not None:
                            break
                if not (stopped or cancelled or refresh is not None):
                    break
                if isinstance(it, Generator):
                    it.close()  # the engine's sampler is freed; nothing else touches the context
                if gen.prompt_decoded:  # the part's decode steps, for the answer's speed
                    decoded += max(len(gen.tokens) - 1, 0)
                    decode_s += t_tok - t_part - gen.prefill_s
                if stopped:
                    gen.stop_reason = "stop"
                    break
                if cancelled:  # the context holds the set, not the turn: it is decoded whole
                    prefix += gen.tokens
                    turn_start = s.working.hot.end
                    gen = GenStats(cancelled=True, stop_reason="cancelled")
                    break
                assert refresh is not None
                st.restored_blocks += refresh.restored
                st.reinjected_blocks += refresh.reinjected
                prefix += gen.tokens
                turn_start = s.working.hot.end
                if len(prefix) >= p.max_tokens:
                    gen = GenStats(prompt_decoded=False, stop_reason="length")
                    break
        finally:
            # the engine's generator ends here, not when this frame is freed (a traceback that
            # keeps the frame would keep its hold on a shared context's slot, and its sampler)
            if isinstance(it, Generator):
                it.close()
            if watch is not None:
                st.refreshes, st.refresh_checks = watch.log, watch.checks
                assert s.working.last is not None
                st.sources = _sources(s.working.last.sources, s.working.last.signals)
                st.blocks_in_working_set = len(s.working.last.docs) + len(s.working.last.recent)
            self._finish(q_toks, prefix, gen, "".join(pieces), turn_start, t0, decoded, decode_s)

    def _finish(
        self,
        q_toks: list[int],
        prefix: list[int],
        gen: GenStats,
        answer: str,
        turn_start: int,
        t0: float,
        decoded: int = 0,
        decode_s: float = 0.0,
    ) -> None:
        """Bring the KV in line with the whole turn (the undecoded tail and the end-of-turn
        marker) and store it, however the turn ended. ``prefix``: answer tokens generated
        before the latest refresh (decoded again after the question since, as part of the
        last part's prompt); ``decoded``/``decode_s``: the earlier parts' decode steps."""
        s, st = self.session, self.stats
        fr, ctx = s.frame, s.engine.ctx
        ctx.clear_cancel()
        prompt = q_toks + prefix
        if gen.prompt_decoded:
            tail, pos = gen.tokens[gen.n_decoded :] + fr.answer_end, turn_start + len(prompt) + gen.n_decoded
        else:  # stopped during the prompt's prefill: decode it whole again
            tail, pos = prompt + gen.tokens + fr.answer_end, turn_start
        ctx.seq_rm(0, pos, -1)
        ctx.decode(tail, pos, 0, logits="none")
        self._finished = True
        st.answer, st.ttft_s = answer, st.ttft_s or (time.perf_counter() - t0)
        steps = decoded + max(gen.completion_tokens - 1, 0)
        seconds = decode_s + (gen.decode_s if gen.completion_tokens > 1 else 0.0)
        st.decode_tok_s = steps / seconds if prefix and seconds > 0 else gen.decode_tok_s
        st.prompt_tokens, st.completion_tokens = len(q_toks), len(prefix) + gen.completion_tokens
        st.cancelled = gen.cancelled
        st.stop_reason = gen.stop_reason or "closed"  # closed by the caller before it ended
        # stored last: on a full disk the answer and its numbers stand, the exchange is not recorded
        s._store_turn(self.question, answer, prompt + gen.tokens + fr.answer_end, turn_start)
        st.total_tokens, st.hot_tokens = s.total_tokens, s.working.hot.n_tokens
        st.blocks_total = s._n_docs + len(s.turns)
        st.warnings = s._damage_notes()


def _damage_notes_for(left_out: list[tuple[str, str, int]], repaired: list[BlockRow]) -> list[str]:
    """One line per file (or for the conversation) of the damage a turn met."""
    out = []
    by_source: dict[tuple[str, str], list[int]] = {}
    for kind, source, idx in left_out:
        by_source.setdefault((kind, source), []).append(idx)
    for (kind, source), idxs in by_source.items():
        n = f"{len(idxs)} block{'s' if len(idxs) > 1 else ''}"
        if kind == "turn":
            out.append(f"{n} of the conversation left out: their stored tokens are damaged")
        elif kind == "file":
            out.append(f"{source}: {n} left out: the stored tokens are damaged; load the file again to repair them")
        else:
            out.append(f"{source}: {n} left out: the stored tokens are damaged; add it again to repair them")
    for row in repaired:
        where = f"{short_path(row.source)}:{row.lines[0]}-{row.lines[1]}" if row.lines else short_path(row.source)
        out.append(f"{where}: its stored KV was damaged; rebuilt from its exact tokens")
    return out


def _sources(sources, signals: dict[str, str]) -> list[dict]:
    """What ``ask --json``, the chat and ``serve`` say of each block that served an answer."""
    out = []
    for row, score, how in sources:
        src = {"path": row.source, "lines": list(row.lines) if row.lines else None, "score": round(score, 4)}
        src["how"] = how
        src["signal"] = signals.get(row.key, "refresh")
        if row.label:
            src["section"] = row.label
        if row.pages:
            src["pages"] = list(row.pages)
        out.append(src)
    return out


REFRESH_MAX = 3  # refreshes that bring blocks in, per answer
REFRESH_CHECKS = 8  # re-scorings per answer
REFRESH_GAP = 4  # answer tokens between two re-scorings, except at a newline


class _Watch:
    """When to choose the working set again during an answer: once a word of the answer
    is complete that names a key the question did not (an identifier, a value, a word
    rare in the session), at the next newline or ``REFRESH_GAP`` tokens on; at most
    ``REFRESH_CHECKS`` re-scorings and ``REFRESH_MAX`` refreshes per answer."""

    def __init__(self, session: Session, q_ids: list[int]) -> None:
        self.session = session
        self.selector = session.working.selector
        model = session.engine.model
        self.piece = lambda t: model.piece(t).decode("utf-8", "replace")
        self.known = {w for w, _ in self.selector.key_words(q_ids)}
        self.pending: list[str] = []
        self.checks = 0
        self.last_at = 0
        self.log: list[dict] = []

    def due(self, answer: list[int]) -> str | None:
        """After each token the answer yields: the reason to re-score now, or None."""
        if not answer or self.checks >= REFRESH_CHECKS or len(self.log) >= REFRESH_MAX:
            return None
        p = self.piece(answer[-1])
        if not p or not (p[0].isalnum() or p[0] == "_") or "\n" in p:  # a word may have ended before it
            tail = answer[-24:-1]
            ws = words(tail, self.piece)
            if ws and ws[-1].end == len(tail):
                w = ws[-1]
                if w.text not in self.known:
                    self.known.add(w.text)
                    if self.selector.is_key(w.text, tail[w.start : w.end]):
                        self.pending.append(w.text)
        if self.pending and ("\n" in p or len(answer) - self.last_at >= REFRESH_GAP):
            return "newline" if "\n" in p else "word"
        return None

    def refresh(self, q_ids: list[int], answer: list[int], reason: str) -> Refresh | None:
        """Re-score with the question and the answer so far; bring in what is new."""
        self.checks += 1
        self.last_at = len(answer)
        words_, self.pending = self.pending, []
        r = self.session.working.refresh(q_ids + answer)
        if r is not None:
            self.log.append(
                {
                    "at": len(answer),
                    "reason": reason,
                    "words": words_,
                    "blocks": [
                        {"path": b.source, "lines": list(b.lines) if b.lines else None, "how": "reinjected"}
                        for b in r.added
                    ],
                    "dropped": len(r.dropped),
                    "ms": round(r.ms, 1),
                }
            )
        return r
