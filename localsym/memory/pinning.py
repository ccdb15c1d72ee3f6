"""Which blocks keep their KV at higher precision: those holding needle-like strings.

Retrieval re-prefills the blocks that hold a question's rare tokens from their exact
tokens, so an answer never reads a needle through quantized KV when the question names
it. A block can still come back as plain context (recency, the sketch), and then a key or
a number read through Q2 noise is the costliest kind of error; such blocks are cheap to
spare. The test is on the block's text, decided once when the block is sealed.
"""

from __future__ import annotations

import re

PIN_FLOOR = "q8"  # nothing cheaper than this for a pinned block, warm or cold

# identifiers and keys: 8+ word characters mixing letters and digits (sk-9fQ2..., zT0YQOaN1,
# a3f9c2e1 hashes), and numbers of 5+ digits (pass keys, account numbers)
_MIXED = re.compile(r"[A-Za-z0-9_\-]{8,}")
_NUMBER = re.compile(r"(?<![0-9.])[0-9]{5,}(?![0-9.])")


def _mixed(word: str) -> bool:
    digits = sum(c.isdigit() for c in word)
    letters = sum(c.isalpha() for c in word)
    upper = sum(c.isupper() for c in word)
    # a key mixes digits and letters, or many capitals among small letters; plain code
    # identifiers (sha256, utf8_decode, parse_http2) have few digits and few capitals
    return (digits >= 2 and letters >= 2 and digits + upper >= 4) or (
        upper >= 3 and letters - upper >= 2 and digits >= 1
    )


def needle_like(text: str) -> bool:
    """True when the text holds a string that looks like a key, a hash or a long number."""
    if _NUMBER.search(text):
        return True
    return any(_mixed(m.group()) for m in _MIXED.finditer(text))
