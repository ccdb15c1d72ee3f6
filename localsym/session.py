"""A Session: open by name and model, ingest text or files, ask (streams), resume later.

The CLI and the TUI use only this API. A session's context is a sequence of blocks of
``block_tokens`` tokens. Documents are encoded each against the fixed system preamble (the
sink) and their own earlier blocks, so a file's blocks depend on nothing else in the
session: they are content-addressed (a chain hash of model, cache layout, sink and the
file's tokens up to the block) and reused by any session of the same model that loads the
same file. A block's KV is quantized into the warm tier (RAM, LRU) and the cold tier (disk),
and restored, position-shifted, into the hot context when a question needs it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localsym import model_store, paths
from localsym.errors import LocalsymError
from localsym.ingest import MAX_FILE_BYTES, walk
from localsym.memory import kv_quant
from localsym.memory.container import CorruptFile
from localsym.memory.encoded_block import EncodedBlock
from localsym.memory.hot import N_SEQ, REBUILD, HotContext, Segment
from localsym.memory.index_db import BlockRow, IndexDB
from localsym.memory.pinning import PIN_FLOOR, needle_like
from localsym.memory.query_probe import AttentionSignal
from localsym.memory.retrieval import Retriever
from localsym.memory.tiers import ColdTier, SharedKeys, WarmTier
from localsym.runtime import kv_state
from localsym.runtime.engine import Engine, GenParams, GenStats, RunOptions
from localsym.runtime.model_info import model_info

log = logging.getLogger("localsym.session")
DEFAULT_SYSTEM = ("You are a helpful assistant. Answer from the documents and the conversation "
                  "below; quote names, numbers and keys exactly.")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
Progress = Callable[[int, int, str], None]  # (tokens done, tokens total, current source)


@dataclass
class SessionConfig:
    block_tokens: int = 256
    warm_mb: float = 256.0
    cold_gb: float = 20.0
    system: str = DEFAULT_SYSTEM
    working_set_tokens: int | None = None  # documents restored per question (default: half the hot context)
    recent_tokens: int = 1024  # the latest conversation always comes along
    ingest_window: int = 2048  # how far back a document's block sees its own earlier text
    max_file_bytes: int = MAX_FILE_BYTES


@dataclass
class LoadReport:
    files: int = 0
    tokens: int = 0
    blocks: int = 0
    computed_blocks: int = 0
    reused_blocks: int = 0
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class AskStats:
    answer: str = ""
    total_tokens: int = 0
    hot_tokens: int = 0
    blocks_total: int = 0
    blocks_in_working_set: int = 0
    restored_blocks: int = 0
    recomputed_blocks: int = 0
    reinjected_blocks: int = 0  # needle blocks re-prefilled from their exact tokens
    select_ms: float = 0.0
    probe_ms: float = 0.0  # the question's probe decode for attention-native scoring
    ttft_s: float = 0.0
    decode_tok_s: float = 0.0
    cancelled: bool = False

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


@dataclass
class _Frame:
    """The chat template cut into the pieces a working set is built from."""

    sink: list[int]  # BOS + system prompt opening, before the documents
    close: list[int]  # after the documents (closes the system turn)
    user_prefix: list[int]
    user_suffix: list[int]  # closes the user turn and opens the assistant's
    answer_end: list[int]  # closes the assistant turn


def session_dir(name: str) -> Path:
    if not _NAME.match(name):
        raise LocalsymError(f"bad session name {name!r}: letters, digits, '.', '_' and '-', at most 64")
    return paths.sessions_dir() / name


def list_sessions() -> list[dict]:
    root = paths.sessions_dir()
    out = []
    if root.is_dir():
        for d in sorted(root.iterdir()):
            db_path = d / "session.db"
            if db_path.exists():
                db = IndexDB(db_path)
                out.append({"name": d.name, "model": db.get("model"), "tokens": db.get("total_tokens", 0),
                            "updated": db.get("updated", 0)})
                db.close()
    return out


def rename_session(old: str, new: str) -> None:
    src, dst = session_dir(old), session_dir(new)
    if not (src / "session.db").exists():
        raise LocalsymError(f"no session named {old!r}")
    if dst.exists():
        raise LocalsymError(f"a session named {new!r} already exists")
    src.rename(dst)


def delete_session(name: str) -> None:
    """Removes the session's index; its blocks stay in the model's shared block cache."""
    import shutil

    d = session_dir(name)
    if not (d / "session.db").exists():
        raise LocalsymError(f"no session named {name!r}")
    shutil.rmtree(d)


class Session:
    def __init__(self, name: str, engine: Engine, db: IndexDB, config: SessionConfig, model_id: str) -> None:
        self.name, self.engine, self.db, self.config = name, engine, db, config
        self.model_id = model_id
        info = engine.info
        self.n_caches = 2 if info.sliding_window else 1
        self.hot = HotContext(engine.ctx, self.n_caches)
        self.warm = WarmTier(int(config.warm_mb * 2**20))
        self.cold = ColdTier(paths.data_dir() / "blocks" / model_id[:24], int(config.cold_gb * 2**30))
        self.frame = self._frame()
        self.root_key = hashlib.sha256(
            f"{model_id}|{engine.plan.type_k}|{engine.plan.type_v}|{engine.plan.flash_attn}|"
            f"{config.block_tokens}|{config.ingest_window}|{self.frame.sink}".encode()).hexdigest()
        self.attn = AttentionSignal.for_model(engine.model, engine.plan.type_k)
        self.shared_keys = SharedKeys(self.cold.root) if self.attn else None
        self.selector = self._new_selector()
        self.turns: list[BlockRow] = []
        self.docs: list[BlockRow] = []
        for row in db.blocks():
            (self.turns if row.kind == "turn" else self.docs).append(row)
            if row.kind != "turn":
                self.selector.add(row)
        self.hot.decode("sink", self.frame.sink)
        self.last = AskStats()
        self.experts = None
        self._meta_cache: dict[str, dict] = {}  # block key -> its cold file's header metadata

    # -- opening ----------------------------------------------------------------------------
    @classmethod
    def open(cls, name: str, model: str | None = None, opts: RunOptions | None = None,
             config: SessionConfig | None = None, overrides: dict | None = None) -> "Session":
        """Open (or create) a session. Settings, weakest first: defaults, what the session
        stored, the config file's [memory] section, then ``overrides`` (command-line flags);
        ``config`` replaces all of them. Blocks already cut keep their size."""
        from localsym import config as config_file

        d = session_dir(name)
        existing = (d / "session.db").exists()
        db = IndexDB(d / "session.db")
        try:
            stored_model = db.get("model")
            if existing and stored_model and model and model != stored_model:
                raise LocalsymError(f"session {name!r} belongs to model {stored_model!r}, not {model!r}")
            model = model or stored_model
            if model is None:
                from localsym.catalog import default_model

                model = default_model()
            path = model_store.resolve(model)
            stored_cfg = db.get("config") or {}
            if config is not None:
                cfg = config
            else:
                merged = {**SessionConfig().__dict__, **stored_cfg, **config_file.load().get("memory", {}),
                          **(overrides or {})}
                cfg = SessionConfig(**{k: v for k, v in merged.items() if k in SessionConfig.__dataclass_fields__})
            if cfg.block_tokens < 16:
                raise LocalsymError("block_tokens must be at least 16")
            if stored_cfg.get("block_tokens") and stored_cfg["block_tokens"] != cfg.block_tokens:
                cfg.block_tokens = stored_cfg["block_tokens"]  # blocks already cut stay cut
            o = opts or RunOptions()
            o.n_seq_max = max(o.n_seq_max, N_SEQ)
            model_id = db.get("model_id") or model_store.identity(path)
            experts = usage = None
            info = model_info(path)
            if info.is_moe:  # watch routing, learn it and prefetch experts while chatting
                from localsym.experts.live import LiveExperts, learned_store, learned_usage

                usage = learned_usage(model_id, info.n_layer, info.n_expert)
                experts = LiveExperts(path, info, learned_store(model_id))
            try:
                engine = Engine(path, o, observer=experts.observer if experts else None,
                                expert_usage=usage)
            except BaseException:
                if experts is not None:
                    experts.close()
                raise
            db.set("model", model)
            db.set("model_id", model_id)
            db.set("config", cfg.__dict__)
            if not existing:
                db.set("created", time.time())
            sess = cls(name, engine, db, cfg, model_id)
            sess.experts = experts
            return sess
        except BaseException:
            db.close()
            raise

    def close(self) -> None:
        self.db.set("updated", time.time())
        self.db.set("total_tokens", self.total_tokens)
        self.db.close()
        if self.attn is not None:
            self.attn.close()
            self.shared_keys.close()
        self.engine.close()
        if self.experts is not None:
            self.experts.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _frame(self) -> _Frame:
        eng = self.engine
        tpl = eng.template
        tok = lambda s: eng.model.tokenize(s, parse_special=True)  # noqa: E731
        system = self.config.system
        if not tpl.present:  # a base model: a plain document, questions in completion form
            sink = eng.tokenize_prompt(system + "\n\n") if system else eng.tokenize_prompt("")
            return _Frame(sink, tok("\n\n"), tok("Question: "), tok("\nAnswer:"), tok("\n\n"))
        m1, m2, m3 = "\u2063MEM\u2063", "\u2063Q\u2063", "\u2063A\u2063"
        sys_only = tpl.render([{"role": "system", "content": system + m1}], add_generation_prompt=False)
        with_q = tpl.render([{"role": "system", "content": system + m1}, {"role": "user", "content": m2}],
                            add_generation_prompt=True)
        with_a = tpl.render([{"role": "system", "content": system + m1}, {"role": "user", "content": m2},
                             {"role": "assistant", "content": m3}], add_generation_prompt=False)
        sink_text, close_text = sys_only.split(m1)
        after_close = with_q[len(sys_only):]
        user_prefix, user_suffix = after_close.split(m2)
        answer_end = with_a.split(m3)[1]
        return _Frame(eng.tokenize_prompt(sink_text), tok(close_text), tok(user_prefix), tok(user_suffix),
                      tok(answer_end))

    def _new_selector(self) -> Retriever:
        return Retriever(key_shape=self.attn.shape if self.attn else None)

    # -- sizes -------------------------------------------------------------------------------
    @property
    def total_tokens(self) -> int:
        return sum(b.n_tokens for b in self.docs) + sum(b.n_tokens for b in self.turns)

    def memory_usage(self) -> dict:
        return {"total_tokens": self.total_tokens, "blocks": len(self.docs) + len(self.turns),
                "hot_tokens": self.hot.n_tokens, "hot_capacity": self.engine.ctx.n_ctx,
                "hot_bytes": self.hot.n_tokens * self.engine.info.kv_bytes_per_token(),
                "warm_blocks": len(self.warm), "warm_bytes": self.warm.used, "warm_budget": self.warm.budget,
                "cold_bytes": self.cold.used, "cold_budget": self.cold.budget}

    # -- blocks in and out -------------------------------------------------------------------------
    def _store(self, key: str, state: kv_state.SeqState, pos0: int, tokens: list[int]) -> EncodedBlock:
        """Write a sealed block to cold and warm; returns the warm copy."""
        n_kv = self.engine.info.n_head_kv
        pinned = needle_like(self.engine.model.detokenize(tokens))
        floor = PIN_FLOOR if pinned else None
        cold, warm = EncodedBlock.tiers_from_state(state, (kv_quant.COLD_POLICY, kv_quant.WARM_POLICY), n_kv, floor)
        self.cold.put(key, cold, {"pos0": pos0, "model_id": self.model_id, "pinned": pinned})
        self.warm.put(key, warm)
        return warm

    def quant_mix(self) -> dict:
        """The formats the session's blocks are held in (layer-tensors per format, K and V
        apart) in each tier, and how many blocks are pinned at higher precision."""
        warm, cold, pinned = Counter(), Counter(), 0
        for eb in self.warm.blocks():
            warm.update(eb.mix)
        for row in (*self.docs, *self.turns):
            meta = self._meta_cache.get(row.key)
            if meta is None:
                meta = self._meta_cache[row.key] = self.cold.meta(row.key) or {}
            pinned += bool(meta.get("pinned"))
            cold.update(meta.get("mix", {}))
        return {"warm": dict(sorted(warm.items())), "cold": dict(sorted(cold.items())), "pinned_blocks": pinned}

    def _fetch(self, row: BlockRow) -> EncodedBlock:
        eb = self.warm.get(row.key)
        if eb is not None:
            return eb
        try:
            eb, _ = self.cold.get(row.key)
        except (CorruptFile, FileNotFoundError) as e:
            log.warning("block %s of %s is damaged or missing (%s): rebuilding it from its tokens",
                        row.key[:12], row.source, e)
            self.last.recomputed_blocks += 1
            return self._rebuild(row)  # written to cold and warm again
        self.warm.put(row.key, eb)
        return eb

    def _rebuild(self, row: BlockRow) -> EncodedBlock:
        """Recompute a block from its exact tokens, after the sink, in a sequence of its own."""
        ctx, sink = self.engine.ctx, self.frame.sink
        ctx.seq_rm(REBUILD)
        try:
            # the sink right before the block (llama.cpp wants a sequence's positions unbroken)
            start = max(row.pos0 - len(sink), 0)
            ctx.decode(sink[-(row.pos0 - start):] if row.pos0 > start else [], start, REBUILD, logits="none")
            ctx.decode(row.tokens.tolist(), row.pos0, REBUILD, logits="none")
            ctx.seq_rm(REBUILD, 0, row.pos0)
            state = kv_state.parse(ctx.state_seq_get(REBUILD), self.n_caches)
        finally:
            ctx.seq_rm(REBUILD)
        self._meta_cache.pop(row.key, None)
        return self._store(row.key, state, row.pos0, row.tokens.tolist())

    def _restore(self, row: BlockRow) -> None:
        eb = self._fetch(row)
        self.hot.restore(row.key, eb.to_blob(row.pos0, 1), row.pos0, row.n_tokens)
        self.last.restored_blocks += 1

    # -- ingest -----------------------------------------------------------------------------------
    def _doc_tokens(self, text: str, source: str) -> list[int]:
        return self.engine.model.tokenize(f"### {source}\n{text.rstrip()}\n")

    def ingest_text(self, text: str, source: str = "text", kind: str = "text",
                    progress: Progress | None = None, report: LoadReport | None = None,
                    tokens: np.ndarray | None = None) -> LoadReport:
        """``tokens``: the document's tokens when the caller has them already (``load``)."""
        report = report or LoadReport()
        t0 = time.perf_counter()
        eng, B = self.engine, self.config.block_tokens
        toks = tokens.tolist() if tokens is not None else self._doc_tokens(text, source)
        chunks = [toks[i:i + B] for i in range(0, len(toks), B)]
        keys, h = [], self.root_key
        for c in chunks:
            h = hashlib.sha256(h.encode() + b"|" + repr(c).encode()).hexdigest()
            keys.append(h)
        content_sha = hashlib.sha256(text.encode()).hexdigest()
        doc_id = self.db.add_doc(source, kind, content_sha, len(toks))
        P = len(self.frame.sink)
        window = min(eng.ctx.n_ctx - P - B - 16, self.config.ingest_window)
        sim: list[tuple[int, int]] = []  # (chunk index, size) of the doc's blocks in the window
        rows: list[BlockRow] = []
        for j, (chunk, key) in enumerate(zip(chunks, keys)):
            while sim and sum(n for _, n in sim) + len(chunk) > window:
                sim.pop(0)
            pos0 = P + sum(n for _, n in sim)
            attn = None
            if not self.cold.has(key):
                self._arrange_window([rows[i] for i, _ in sim])
                seg = self.hot.decode(key, chunk)
                assert seg.start == pos0
                state = self.hot.save(seg.start, seg.n)
                self._store(key, state, pos0, chunk)
                attn = self.attn.keys_of(state) if self.attn else None
                if attn is not None:
                    self.shared_keys.put(key, attn)
                report.computed_blocks += 1
            else:
                report.reused_blocks += 1
                # the model's shared key store has every computed block's keys: a reload
                # reads no block to get them
                attn = self.shared_keys.get(key) if self.attn else None
            block_id = self.db.add_block(doc_id, j, key, pos0, chunk, attn)
            row = BlockRow(block_id, doc_id, j, key, pos0, np.asarray(chunk, np.int32), kind, source, attn)
            rows.append(row)
            sim.append((j, len(chunk)))
            report.tokens += len(chunk)
            report.blocks += 1
            if progress:
                progress(report.tokens, -1, source)
        self.db.complete_doc(doc_id, source, kind)
        if kind == "file":
            self.docs = [b for b in self.docs if not (b.source == source and b.doc_id != doc_id)]
            self.selector = self._new_selector()
            for b in self.docs:
                self.selector.add(b)
        for r in rows:
            self.docs.append(r)
            self.selector.add(r)
        self.hot.truncate(1)
        report.seconds += time.perf_counter() - t0
        return report

    def _arrange_window(self, want: list[BlockRow]) -> None:
        """Make the hot context hold the sink then exactly ``want`` (the doc's window)."""
        have = [s.key for s in self.hot.segments[1:]]
        keys = [r.key for r in want]
        if have == keys:
            return
        k = len(have) - len(keys)
        if k > 0 and have[k:] == keys:  # the window slid: drop the oldest and shift back
            self.hot.drop_front(1, k)
            return
        self.hot.truncate(1)
        for r in want:
            self._restore(r)

    def load(self, path: str | Path, progress: Progress | None = None) -> LoadReport:
        """Ingest a file or a tree. Unchanged files already in the session are skipped;
        changed ones replace their older version; their blocks come from the block cache
        when this model has seen the same content before."""
        found = walk(path, self.config.max_file_bytes)
        report = LoadReport(skipped=[(str(p), why) for p, why in found.skipped])
        known = self.db.doc_sources()
        texts = []
        for f in found.files:
            try:
                texts.append((f, f.read_text(encoding="utf-8", errors="replace")))
            except OSError as e:
                report.skipped.append((str(f), f"unreadable ({e.strerror})"))
        todo = []  # (source, text, tokens) of new or changed files: the bar's total is exact
        for f, text in texts:
            source = str(f)
            report.files += 1
            if known.get(source) != hashlib.sha256(text.encode()).hexdigest():
                # int32 while waiting: a list of Python ints costs 9x the memory
                todo.append((source, text, np.asarray(self._doc_tokens(text, source), np.int32)))
        total = sum(len(t) for _, _, t in todo)
        for source, text, toks in todo:
            self.ingest_text(text, source, "file", (lambda d, _t, s: progress(d, total, s)) if progress else None,
                             report, toks)
        self.db.set("total_tokens", self.total_tokens)
        return report

    # -- asking ----------------------------------------------------------------------------------------
    def _working_set(self, question: list[int], reserve: int) -> tuple[list[BlockRow], list[BlockRow]]:
        n_ctx = self.engine.ctx.n_ctx
        free = n_ctx - len(self.frame.sink) - len(self.frame.close) - reserve - self.config.block_tokens - 32
        if free <= 0:
            raise LocalsymError(f"the question and answer do not fit the {n_ctx}-token hot context: raise -c")
        recent, used = [], 0
        for row in reversed(self.turns):
            if used + row.n_tokens > min(self.config.recent_tokens, free // 2):
                break
            recent.insert(0, row)
            used += row.n_tokens
        doc_budget = min(self.config.working_set_tokens or n_ctx // 2, free - used)
        query = None
        if self.attn is not None and self.selector.has_keys:
            t0 = time.perf_counter()
            query = self.attn.query(question)  # the question's own queries, from a probe decode
            self.last.probe_ms = (time.perf_counter() - t0) * 1000
        return self.selector.select(question, max(doc_budget, 0), query), recent

    def ask(self, question: str, params: GenParams | None = None, raw: bool = False) -> Iterator[str]:
        """Stream the answer; ``self.last`` holds the numbers of this turn when it ends.

        ``raw``: the question is a completion prompt, sent without the chat turn's framing
        (base models asked in completion form)."""
        if not question.strip():
            raise LocalsymError("empty question")
        params = params or GenParams()
        eng, fr = self.engine, self.frame
        self.last = AskStats()
        t0 = time.perf_counter()
        q_ids = eng.model.tokenize(question)
        q_toks = q_ids if raw else fr.user_prefix + q_ids + fr.user_suffix
        docs, recent = self._working_set(q_ids, len(q_toks) + params.max_tokens + len(fr.answer_end))
        want = [("sink", None)] + [(r.key, r) for r in docs] + [("close", None)] + [(r.key, r) for r in recent]
        have = [s.key for s in self.hot.segments]
        keep = 0
        while keep < min(len(have), len(want)) and have[keep] == want[keep][0]:
            keep += 1
        self.hot.truncate(keep)
        needles = self.selector.last_needles
        self.last.select_ms = self.selector.last_ms
        for key, row in want[keep:]:
            if row is None:
                self.hot.decode(key, fr.close)
            elif row.key in needles:
                # stored below F16: bring its exact tokens back by prefill, so a key or a
                # name in it is read from exact KV, not from a quantized copy
                self.hot.decode(row.key, row.tokens.tolist())
                self.last.reinjected_blocks += 1
            else:
                self._restore(row)
        turn_start = self.hot.end
        stats = GenStats()
        pieces = []
        first = 0.0
        for piece in eng.generate(q_toks, turn_start, params, seq=0, stats=stats):
            if not pieces:
                first = time.perf_counter() - t0
            pieces.append(piece)
            yield piece
        answer = "".join(pieces)
        # Bring the KV in line with the full turn: undecoded tail + the end-of-turn marker.
        tail = stats.tokens[stats.n_decoded:] + fr.answer_end
        pos = turn_start + len(q_toks) + stats.n_decoded
        self.engine.ctx.clear_cancel()
        eng.ctx.decode(tail, pos, 0, logits="none")
        turn = q_toks + stats.tokens + fr.answer_end
        self._store_turn(question, answer, turn, turn_start)
        s = self.last
        s.answer, s.ttft_s = answer, first or (time.perf_counter() - t0)
        s.total_tokens, s.hot_tokens = self.total_tokens, self.hot.n_tokens
        s.blocks_total = len(self.docs) + len(self.turns)
        s.blocks_in_working_set = len(docs) + len(recent)
        s.decode_tok_s, s.cancelled = stats.decode_tok_s, stats.cancelled

    def _store_turn(self, question: str, answer: str, turn: list[int], start: int) -> None:
        B = self.config.block_tokens
        doc_id = self.db.add_doc("chat", "turn", hashlib.sha256(repr(turn).encode()).hexdigest(), len(turn))
        self.db.complete_doc(doc_id, "chat", "turn")
        h = self.turns[-1].key if self.turns else self.root_key
        # the transient turn run becomes block segments, so the next question can keep them
        for j in range(0, len(turn), B):
            chunk = turn[j:j + B]
            h = hashlib.sha256(h.encode() + b"|turn|" + repr(chunk).encode()).hexdigest()
            pos0 = start + j
            self._store(h, self.hot.save(pos0, len(chunk)), pos0, chunk)
            bid = self.db.add_block(doc_id, j // B, h, pos0, chunk)
            self.turns.append(BlockRow(bid, doc_id, j // B, h, pos0, np.asarray(chunk, np.int32), "turn", "chat"))
            self.hot.segments.append(Segment(h, pos0, len(chunk)))
        self.db.add_message("user", question, doc_id)
        self.db.add_message("assistant", answer, doc_id)
        self.db.set("total_tokens", self.total_tokens)
        self.db.set("updated", time.time())

    def cancel(self) -> None:
        """Stop a running answer between tokens (callable from another thread)."""
        self.engine.ctx.cancel()

    def messages(self) -> list[dict]:
        return self.db.messages()
