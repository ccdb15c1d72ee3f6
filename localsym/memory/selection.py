"""The interface between the tiered memory and whatever chooses a question's blocks.

``localsym.memory.retrieval.Retriever`` is the policy in use (pointer index + FHRR
sketches + LSH); anything with these two methods can replace it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from localsym.memory.index_db import BlockRow


class Selector(Protocol):
    last_needles: set[str]  # keys of selected blocks to re-inject verbatim
    last_ms: float

    def add(self, block: BlockRow) -> None: ...

    def select(self, question: Sequence[int], budget_tokens: int, query=None) -> list[BlockRow]: ...
