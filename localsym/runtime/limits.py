"""What llama.cpp asserts about a context's sizes, checked before one is made.

A number a user or a client typed must never reach a ``GGML_ASSERT`` (a SIGABRT that takes
the whole process, and for `serve` every client's stream, with it). The rules, read from the
vendored llama.cpp (``llama-context.cpp``):

- every context is padded to a multiple of 256 cells, so a smaller ``n_ctx`` buys nothing;
- ``n_batch`` is cut to the *requested* ``n_ctx``, and the output buffer reserved for
  ``n_seq_max`` rows must fit in it: ``n_seq_max <= min(n_ctx, n_batch)`` or
  ``output_reserve`` aborts (``-c 1`` with three sequences did);
- ``n_seq_max <= LLAMA_MAX_SEQ`` (256), ``n_threads <= GGML_MAX_N_THREADS`` (512);
- the sizes are ``uint32_t``: ctypes wraps larger values silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from localsym.errors import LocalsymError

MIN_CTX = 256  # llama.cpp pads every context to a multiple of 256 cells
MAX_CTX = 1 << 30  # far past any model, well inside uint32 after padding
MAX_SEQ = 256  # LLAMA_MAX_SEQ
MAX_THREADS = 512  # GGML_MAX_N_THREADS
MAX_BATCH = 1 << 20


@dataclass
class ContextSizes:
    """Sizes llama.cpp accepts, and a line for each value that was raised to get there."""

    n_ctx: int
    n_batch: int
    n_ubatch: int
    n_seq_max: int
    notes: list[str] = field(default_factory=list)


def _int(name: str, value: object, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise LocalsymError(f"{name} must be an integer from {lo} to {hi}, not {value!r}")
    return value


def check_ctx(n_ctx: int | None) -> tuple[int | None, str | None]:
    """A user's ``-c``: None (fitted) and 0 (the model's own) pass; 1..255 is raised to
    256 (what llama.cpp allocates anyway) with a note; negative or huge is refused."""
    if n_ctx is None or n_ctx == 0:
        return n_ctx, None
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
        raise LocalsymError(f"-c must be 0 (the model's own context) or a positive token count, not {n_ctx!r}")
    if n_ctx > MAX_CTX:
        raise LocalsymError(f"-c {n_ctx} is too large: at most {MAX_CTX}")
    if n_ctx < MIN_CTX:
        return MIN_CTX, f"-c {n_ctx} raised to {MIN_CTX}, the smallest context llama.cpp makes"
    return n_ctx, None


def check_threads(n_threads: int | None) -> int | None:
    if n_threads is None:
        return None
    if isinstance(n_threads, bool) or not isinstance(n_threads, int) or n_threads < 1:
        raise LocalsymError(f"--threads must be at least 1, not {n_threads}")
    if n_threads > MAX_THREADS:
        raise LocalsymError(f"--threads must be at most {MAX_THREADS} (llama.cpp's limit), not {n_threads}")
    return n_threads


def context_sizes(n_ctx: int, n_batch: int = 512, n_ubatch: int = 512, n_seq_max: int = 1) -> ContextSizes:
    """The sizes to hand ``llama_init_from_model``: refused when no context can honour
    them, raised (with a note) when a bigger value costs nothing or little."""
    n_seq_max = _int("n_seq_max (--parallel)", n_seq_max, 1, MAX_SEQ)
    n_batch = _int("n_batch (-b)", n_batch, 1, MAX_BATCH)
    n_ubatch = _int("n_ubatch (-ub)", n_ubatch, 1, MAX_BATCH)
    n_ctx = _int("n_ctx (-c)", n_ctx, 1, MAX_CTX)
    notes = []
    if n_ctx < MIN_CTX:
        notes.append(f"context raised from {n_ctx} to {MIN_CTX} tokens, the smallest llama.cpp makes")
        n_ctx = MIN_CTX
    n_batch = min(n_batch, n_ctx)  # llama.cpp cuts it to n_ctx with causal attention
    if n_batch < n_seq_max:
        notes.append(f"batch raised from {n_batch} to {n_seq_max} tokens, one output row per sequence")
        n_batch = n_seq_max
    return ContextSizes(n_ctx, n_batch, min(n_ubatch, n_batch), n_seq_max, notes)


def session_min_ctx(block_tokens: int) -> int:
    """The smallest hot context a session works in: the sink and a question beside a block
    being encoded and one brought back (a smaller one fails at its first load or question)."""
    need = 2 * block_tokens + MIN_CTX
    return -(-need // MIN_CTX) * MIN_CTX


def raised_note(requested: int | None, used: int | None) -> str | None:
    """The line saying a user's ``-c`` was raised, or None when it was not."""
    if requested and used and 0 < requested < used:
        return f"-c {requested} raised to {used}, the smallest context that works here"
    return None
