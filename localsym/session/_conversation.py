"""A whole conversation answered through the model's own chat template, beside a session's
memory: what tool calling needs (the template renders the tool definitions, the assistant's
past calls and the tools' results in the model's own markup, which the session's frame,
cut for plain user/assistant turns, cannot).

The conversation is decoded in a sequence of its own (``REBUILD``, free between a session's
operations) from position 0, so it sees nothing of the session's working set and leaves it
as it was; when the context has no room for both, the working set is cut back to its sink
first (the next question brings its blocks back from the store). Nothing is stored: the
session's history, blocks and messages stay as they were.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Iterator
from typing import TYPE_CHECKING, Any, cast

from localsym.memory.hot import REBUILD
from localsym.runtime.engine import GenParams, GenStats
from localsym.session._reports import TurnStats

if TYPE_CHECKING:
    from localsym.session._session import Session


class ConversationTurn:
    """Iterate for the answer's pieces; ``stats`` fill in as it runs (``prompt_tokens`` is
    the whole rendered conversation); ``close()`` ends it early. Built by
    ``Session.ask_conversation``."""

    def __init__(
        self, session: Session, messages: list[dict[str, Any]], params: GenParams, tools: list[dict] | None
    ) -> None:
        self.session, self.params = session, params
        eng = session.engine
        extra = {"tools": tools} if tools else {}
        self.tokens = eng.chat_tokens(
            cast(Any, messages), True, **extra
        )  # a template that cannot render it raises here
        self.stats = TurnStats()
        self._gen: Generator[str, None, None] | None = None

    def __iter__(self) -> Iterator[str]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    def text(self) -> str:
        return "".join(self)

    def close(self) -> None:
        if self._gen is not None:
            self._gen.close()
        elif not self.stats.stop_reason:
            self.stats.stop_reason = "closed"

    def __enter__(self) -> ConversationTurn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> Generator[str, None, None]:
        with self.session.held():
            yield from self._answer()

    def _answer(self) -> Generator[str, None, None]:
        s, st, p = self.session, self.stats, self.params
        eng = s.engine
        ctx = eng.ctx
        hot = s.working.hot
        if hot.n_tokens + len(self.tokens) + p.max_tokens + 8 > ctx.n_ctx:
            hot.truncate(1)  # the cells are one pool: make room (the blocks stay in the store)
        ctx.seq_rm(REBUILD)
        gen = GenStats()
        pieces: list[str] = []
        t0 = time.perf_counter()
        try:
            for piece in eng.generate(self.tokens, 0, p, seq=REBUILD, stats=gen):
                if not pieces:
                    st.ttft_s = time.perf_counter() - t0
                pieces.append(piece)
                yield piece
        finally:
            ctx.clear_cancel()
            ctx.seq_rm(REBUILD)
            st.answer = "".join(pieces)
            st.prompt_tokens, st.completion_tokens = gen.prompt_tokens, gen.completion_tokens
            st.decode_tok_s = gen.decode_tok_s
            st.ttft_s = st.ttft_s or (time.perf_counter() - t0)
            st.cancelled = gen.cancelled
            st.stop_reason = gen.stop_reason or "closed"
            st.total_tokens, st.hot_tokens = s.total_tokens, hot.n_tokens
