"""What the session reports to its faces: loads, turns and its own state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from localsym.progress import Progress

__all__ = ["LoadReport", "Progress", "SessionStatus", "TurnStats"]


@dataclass
class LoadReport:
    files: int = 0
    tokens: int = 0
    blocks: int = 0
    computed_blocks: int = 0
    reused_blocks: int = 0
    seconds: float = 0.0
    seal_seconds: float = 0.0  # the seal worker's own time (parse, choose formats, encode)
    seals: list[tuple[float, int]] = field(default_factory=list)  # per sealed block: (seconds, f16 bytes)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[tuple[str, int]] = field(default_factory=list)  # (ignore file, files it excluded)
    partial: list[tuple[str, int]] = field(default_factory=list)  # stopped part-way: (file, blocks kept)


@dataclass
class TurnStats:
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
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stop_reason: str = ""
    cancelled: bool = False
    # the document blocks that served the answer: {"path", "lines": [first, last] or None,
    # "score" (its fused score for the question, the best 1), "how": "restored" (its KV
    # from the block store) or "reinjected" (its exact tokens prefilled again), "signal"
    # (what chose it: lexical, sketch, attention, rare, needle, hop, follower, refresh),
    # "section" (the definitions or heading it holds, where known), "pages" ([first, last])}
    sources: list[dict[str, Any]] = field(default_factory=list)
    # decode-time refreshes that brought blocks in: {"at" (answer tokens so far), "reason"
    # ("word" or "newline"), "words" (the answer's new keys), "blocks" (path, lines, how),
    # "dropped" (blocks that made room), "ms"}; and how many re-scorings were made
    refreshes: list[dict[str, Any]] = field(default_factory=list)
    refresh_checks: int = 0
    # damage met while answering, one line each, for the faces to show where the user looks
    # (stderr, the chat): blocks left out because their stored tokens are damaged, blocks
    # whose stored KV was damaged and was rebuilt from their tokens
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def source_label(src: dict[str, Any]) -> str:
    """``path:first-last`` of a source, or ``path p. 9-10`` for a paged document, then what
    it holds (``· in Jar: get``, ``· Installation > From source``) where known."""
    where = str(src.get("path"))
    pages, lines = src.get("pages"), src.get("lines")
    if pages:
        where += f" p. {pages[0]}" if pages[0] == pages[1] else f" p. {pages[0]}-{pages[1]}"
    elif lines:
        where += f":{lines[0]}-{lines[1]}"
    return where + (f" · {src['section']}" if src.get("section") else "")


@dataclass
class SessionStatus:
    """Everything a face shows about an open session, in one read."""

    name: str
    model: str
    model_path: str
    device: str  # "GPU" or "CPU"
    total_tokens: int
    blocks: int
    hot_tokens: int
    hot_capacity: int
    hot_bytes: int
    warm_blocks: int
    warm_bytes: int
    warm_budget: int
    cold_bytes: int
    cold_budget: int
    model_summary: dict[str, Any]  # architecture, params, quantization, layers, context, KV bytes/token, ...
    plan: dict[str, Any]  # the fit plan llama.cpp runs under (-ngl, -c, -ctk/-ctv, -fa, ...)
