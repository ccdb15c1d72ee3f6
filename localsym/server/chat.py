"""A chat request from either API, end to end: take the session, bring it in line with the
request's conversation, run the turn, record what the client got, give the session back.

How a request's messages meet a named session's memory (the ledger records what it holds):

- The leading system message is the session's ``system`` setting; when it differs, the
  session is reopened with it. Without one the session keeps its own.
- Only the new user message, no earlier ones: the session's memory stands and the question
  is asked after all it holds (``continue``): clients that send one message at a time get
  localsym's memory. Start over with a new session name, or DELETE the session.
- The session's conversation is a prefix of the request's earlier messages (the usual
  resend): messages it has not seen yet (e.g. answers from elsewhere) are ingested as
  history text, then only the last user message is asked (``incremental``). A resent long
  conversation costs its new message, not its length, and n_ctx does not bound it.
- Otherwise the request contradicts the session (an edited earlier message, a regenerated
  answer): the client's copy is the truth. The session is moved aside as ``NAME~prev``
  (one level of undo; ``~`` is in no name a client can create, and the response names it
  in ``localsym.previous_session`` and X-Localsym-Previous-Session), a new ``NAME`` is
  opened with the same system prompt, files loaded into the old one through this server
  are loaded again (their blocks are reused, nothing is recomputed), the request's earlier
  messages are ingested as history text and the question asked (``reset``).

Without a session name the request runs in an ephemeral session (``ephemeral``), deleted
afterwards: its earlier messages are ingested as history text. Blocks are content-addressed
and shared by every session of the model, so the same history in a later request, or after
a restart, is reused rather than recomputed: prompt caching without a session name too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

import anyio

from localsym.errors import LocalsymError
from localsym.server.errors import ApiError
from localsym.server.ledger import Ledger, Msg, transcript
from localsym.server.roots import allowed_path
from localsym.server.sessions import Gone, Lease, SessionPool, sink_lost
from localsym.server.turns import TurnRun
from localsym.session import GenParams, LoadReport, TurnStats, set_aside

log = logging.getLogger("localsym.server")


@dataclass
class ChatInput:
    session: str | None
    system: str | None
    history: list[Msg]
    question: str
    params: GenParams = field(default_factory=GenParams)
    raw: bool = False  # completion form, no chat framing
    resend: bool = True  # chat APIs: the messages are the conversation; completion APIs: continue the session
    # tool calling: the whole conversation in the template's shape (server.tools), answered
    # beside the session's memory (Session.ask_conversation); ``tools`` for the template
    conversation: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    suffix: str | None = None  # fill in the middle: the text after the gap (raw prompts only)


@dataclass
class Prepared:
    mode: str  # new, continue, incremental, reset, ephemeral, conversation (tool calling)
    history_messages: int = 0
    history: LoadReport | None = None
    previous: str | None = None  # reset: the session's old history, set aside under this name


def finish_reason(stats: TurnStats | None) -> str:
    return "length" if stats is not None and stats.stop_reason in ("length", "context") else "stop"


@dataclass(frozen=True)
class Usage:
    """A request's tokens as OpenAI's ``usage`` and Ollama's counts give them.

    ``prompt``: the prompt the answer was generated from, all of it: the session's working set
    in the hot context (its system prompt, the blocks of the conversation and files it chose)
    and the new message in the chat template. ``cached``: the part of it localsym did not
    compute for this request, because the session's memory held it (still in the hot context
    from the last turn, or restored from RAM or disk). ``prompt - cached`` is what was
    prefilled: the new message, the history it ingested, a system prompt decoded again (a
    session opened or brought back into a shared context), and a whole block for each block
    rebuilt or re-prefilled from its tokens, so ``cached`` never claims more than was reused.
    When an ingested history is longer than the working set, ``prompt`` is what was prefilled."""

    prompt: int
    cached: int
    completion: int

    @property
    def prefilled(self) -> int:
        return self.prompt - self.cached


class ChatRun:
    def __init__(self, lease: Lease, inp: ChatInput, prepared: Prepared, turn: TurnRun, t0: float) -> None:
        self.lease, self.inp, self.prepared, self.turn, self.t0 = lease, inp, prepared, turn, t0
        self.load_s = time.perf_counter() - t0  # waiting, opening and history, before the turn
        self.finished = False
        # what ``usage`` counts with, read while the session is the request's own
        s = lease.session
        self.block_tokens = s.config.block_tokens
        self.sink_tokens = len(s.frame.sink) + len(s.frame.close)
        self.answer_end = len(s.frame.answer_end)
        self.sink_built = False  # the system prompt was decoded for this request (set by ``begin``)

    @classmethod
    async def begin(cls, pool: SessionPool, inp: ChatInput, gone: Gone) -> ChatRun:
        """Take the session, bring it in line with the request, start the turn. Raises
        ApiError (and gives the session back) when the request cannot run."""
        t0, wall = time.perf_counter(), time.time()
        lease = await pool.acquire(inp.session, inp.system, gone)
        try:
            lost = sink_lost(lease.session)
            if inp.conversation is not None:
                prepared = Prepared("conversation")  # the session's memory is neither read nor changed
                if not lease.entry.hot_capacity:
                    lease.entry.hot_capacity = await lease.call(lambda: lease.session.status().hot_capacity)
            else:
                prepared = await lease.call(prepare, lease, inp)
            params = inp.params
            cap = max(16, lease.entry.hot_capacity // 2)  # the answer's room in the hot context
            if params.max_tokens > cap:
                params = replace(params, max_tokens=cap)
            turn = TurnRun(lease, inp.question, params, inp.raw, inp.conversation, inp.tools, inp.suffix)
            turn.start()
        except BaseException as e:
            await lease.release()
            if isinstance(e, LocalsymError):
                raise ApiError(400, str(e)) from None
            raise
        run = cls(lease, inp, prepared, turn, t0)
        run.sink_built = lost or lease.entry.opened_at >= wall
        return run

    # -- what the client is told ----------------------------------------------------------------
    @property
    def stats(self) -> TurnStats | None:
        return self.turn.stats or self.turn.live

    def headers(self) -> dict[str, str]:
        st, h = self.stats, self.prepared.history
        out = {
            "X-Localsym-Session": self.lease.name,
            "X-Localsym-Mode": self.prepared.mode,
            "X-Localsym-History-Reused-Blocks": str(h.reused_blocks if h else 0),
            "X-Localsym-History-Computed-Blocks": str(h.computed_blocks if h else 0),
        }
        if self.prepared.previous:
            out["X-Localsym-Previous-Session"] = self.prepared.previous
        if st is not None:
            out |= {
                "X-Localsym-Restored-Blocks": str(st.restored_blocks),
                "X-Localsym-Recomputed-Blocks": str(st.recomputed_blocks),
                "X-Localsym-Reinjected-Blocks": str(st.reinjected_blocks),
            }
        return out

    def usage(self) -> Usage:
        """The prompt, its cached part and the completion, once the turn has ended (see ``Usage``)."""
        st, h = self.turn.stats, self.prepared.history
        if st is None:
            return Usage(0, 0, 0)
        if self.inp.conversation is not None:  # rendered whole and decoded on its own: nothing reused
            return Usage(st.prompt_tokens, 0, st.completion_tokens)
        computed = st.prompt_tokens + self.block_tokens * (st.recomputed_blocks + st.reinjected_blocks)
        if h is not None and h.computed_blocks:
            # reused blocks are whole ones (only the last block of a text is short)
            computed += max(h.tokens - h.reused_blocks * self.block_tokens, 0)
        if self.sink_built or self.turn.sink_lost:
            computed += self.sink_tokens
        # the hot context after the turn holds the working set, the question and the answer
        context = max(st.hot_tokens - st.completion_tokens - self.answer_end, 0)
        prompt = max(context, computed)
        return Usage(prompt, prompt - computed, st.completion_tokens)

    def extra(self) -> dict[str, Any]:
        """The ``localsym`` field of a final response: how the request met the session."""
        st, h = self.turn.stats, self.prepared.history
        d: dict[str, Any] = {
            "session": None if self.lease.entry.ephemeral else self.lease.name,
            "mode": self.prepared.mode,
            "history_messages": self.prepared.history_messages,
            "history_tokens": h.tokens if h else 0,
            "history_reused_blocks": h.reused_blocks if h else 0,
            "history_computed_blocks": h.computed_blocks if h else 0,
        }
        if self.prepared.previous:
            d["previous_session"] = self.prepared.previous
        if st is not None:
            d |= {
                k: getattr(st, k)
                for k in (
                    "restored_blocks",
                    "recomputed_blocks",
                    "reinjected_blocks",
                    "prompt_tokens",
                    "completion_tokens",
                    "stop_reason",
                    "total_tokens",
                )
            }
            d["ttft_s"] = round(st.ttft_s, 4)
            # what served the answer, as `ask --json` lists it (path, lines or pages, section,
            # signal, how), and what was found damaged on the way
            d["sources"] = list(getattr(st, "sources", None) or [])
            d["warnings"] = list(getattr(st, "warnings", None) or [])
        return d

    def durations_ns(self) -> dict[str, int]:
        """Ollama's timing fields."""
        st = self.turn.stats
        ns = lambda s: int(s * 1e9)  # noqa: E731
        eval_s = st.completion_tokens / st.decode_tok_s if st and st.decode_tok_s else 0.0
        return {
            "total_duration": ns(time.perf_counter() - self.t0),
            "load_duration": ns(self.load_s),
            "prompt_eval_duration": ns(st.ttft_s if st else 0.0),
            "eval_duration": ns(eval_s),
        }

    # -- the end ---------------------------------------------------------------------------------
    async def finish(self, client_gone: bool = False) -> None:
        """Stop the turn if it still runs, wait for it to be stored, record what the client
        was sent, give the session back. Safe to call twice."""
        if self.finished:
            return
        self.finished = True
        with anyio.CancelScope(shield=True):
            try:
                if self.turn.stats is None:
                    self.turn.stop()
                await self.turn.wait()
                if not self.lease.pool.closing:  # at shutdown the ledger keeps what it had (the turn is stored)
                    try:
                        await self.lease.call(_record, self.lease, self.inp.question, self.turn.text, self.turn.stats)
                    except RuntimeError:  # the workers shut down meanwhile
                        log.info("shutting down: the ledger entry of a turn in %s was not written", self.lease.name)
            finally:
                await self.lease.release()


def _record(lease: Lease, question: str, sent: str, stats: TurnStats | None) -> None:
    """(worker) Add the finished turn to the ledger, as the client saw it."""
    e = lease.entry
    if e.ledger is None or e.session is None:
        return
    n = len(e.session.messages())
    if n >= e.ledger.n_messages + 2:
        stopped = stats is not None and (stats.cancelled or stats.stop_reason in ("cancelled", "closed"))
        e.ledger.add_turn(question, sent, stopped, n)
        e.ledger.save()


def prepare(lease: Lease, inp: ChatInput) -> Prepared:
    """(worker) Bring the session in line with the request; see the module's docstring."""
    e = lease.entry
    s = lease.session
    if inp.system is not None and s.config.system != inp.system:
        lease.close_session()
        s = lease.open_session({"system": inp.system})
    if not e.hot_capacity:
        e.hot_capacity = s.status().hot_capacity
    messages = s.messages()
    if e.ledger is None:
        e.ledger = Ledger.load(e.name, messages, e.ephemeral)
    else:
        e.ledger.sync(messages)
    led = e.ledger
    previous = None
    if e.ephemeral:
        mode, new = "ephemeral", inp.history
    elif not inp.resend or not inp.history:
        mode, new = ("continue" if led.covered else "new"), []
    else:
        found = led.match(inp.history)
        if found is None:
            previous = _reset(lease)
            mode, new = "reset", inp.history
        else:
            mode, new = ("incremental" if led.covered else "new"), found
    report = None
    if new:
        report = lease.session.ingest_text(transcript(new), source="chat-history", kind="text")
        assert e.ledger is not None
        e.ledger.extend(new)
        e.ledger.save()
    return Prepared(mode, len(new), report, previous)


def _reset(lease: Lease) -> str:
    """(worker) Move the session aside as NAME~prev (returned) and open a new NAME with the
    same system prompt and the files this server loaded into the old one."""
    e, pool = lease.entry, lease.pool
    system = lease.session.config.system
    loads = list(e.ledger.loads) if e.ledger else []
    lease.close_session()
    prev = set_aside(e.name)  # NAME~prev: a name no user session can have, never shared
    s = lease.open_session({"system": system})
    e.ledger = Ledger.load(e.name, s.messages(), False)
    for path in loads:
        try:
            real = allowed_path(path, pool.settings.allow_roots)
        except ApiError:
            continue  # gone, or no longer under a root
        s.load(real)
        e.ledger.add_load(str(real))
    e.ledger.save()
    return prev
