"""The hot tier: llama.cpp's context. Sequence 0 holds the working set at contiguous
positions; sequence 1 is scratch for saving and restoring blocks; sequence 2 rebuilds
damaged blocks without touching the working set."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from localsym.runtime import kv_state
from localsym.runtime.context_pool import AnyContext

MAIN, SCRATCH, REBUILD = 0, 1, 2
N_SEQ = 3


@dataclass
class Segment:
    key: str  # a block key, or a label for transient runs ("sink", "close", "turn")
    start: int
    n: int


@dataclass
class HotContext:
    ctx: AnyContext
    n_caches: int
    segments: list[Segment] = field(default_factory=list)

    @property
    def end(self) -> int:
        return self.segments[-1].start + self.segments[-1].n if self.segments else 0

    @property
    def n_tokens(self) -> int:
        return sum(s.n for s in self.segments)

    def truncate(self, keep: int) -> None:
        """Keep the first ``keep`` segments, drop the rest from the context."""
        del self.segments[keep:]
        self.ctx.seq_rm(MAIN, self.end, -1)  # also what a cancelled decode left past the end

    def decode(self, key: str, tokens: list[int], logits: str = "none") -> Segment:
        seg = Segment(key, self.end, len(tokens))
        self.ctx.decode(tokens, seg.start, MAIN, logits=logits)
        self.segments.append(seg)
        return seg

    def blob(self, start: int, n: int) -> bytearray:
        """The state blob of positions [start, start + n) of the working set (one copy)."""
        self.ctx.seq_cp(MAIN, SCRATCH, start, start + n)
        try:
            return self.ctx.state_seq_get(SCRATCH)
        finally:
            self.ctx.seq_rm(SCRATCH)

    def save(self, start: int, n: int) -> kv_state.SeqState:
        """Parse the KV of positions [start, start + n) of the working set."""
        return kv_state.parse(self.blob(start, n), self.n_caches)

    def restore(self, key: str, blob: bytes | bytearray | np.ndarray, pos0: int, n: int) -> Segment:
        """Bring a saved block in at the end of the working set (shifted from ``pos0``)."""
        seg = Segment(key, self.end, n)
        self.ctx.state_seq_set(SCRATCH, blob)
        try:
            if seg.start != pos0:
                self.ctx.seq_add(SCRATCH, -1, -1, seg.start - pos0)
            self.ctx.seq_cp(SCRATCH, MAIN, -1, -1)
        finally:
            self.ctx.seq_rm(SCRATCH)
        self.segments.append(seg)
        return seg

    def drop_front(self, first: int, count: int) -> None:
        """Remove segments [first, first + count) and close the gap (a context shift)."""
        if count <= 0:
            return
        a = self.segments[first].start
        last = self.segments[first + count - 1]
        b = last.start + last.n
        self.ctx.seq_rm(MAIN, a, b)
        self.ctx.seq_add(MAIN, b, -1, a - b)
        for s in self.segments[first + count :]:
            s.start -= b - a
        del self.segments[first : first + count]
