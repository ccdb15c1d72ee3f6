"""Words, keys and assignments in token sequences: what exact-phrase retrieval and its hops read.

A question names a key as a run of tokens (``damp-ribbon`` is `` damp``, ``-``, ``rib``,
``bon``; a number is one token per digit): its words are found on the text of the token
pieces, and each word keeps the token span that spells it, so the same span can be looked
for, contiguously, in the blocks' exact tokens. A *key* is a word shaped like an
identifier or a value (a number of 4+ digits, a name with ``-``, ``_`` or ``.`` inside,
letters mixed with digits, capitals after the first letter) or a word spelled with
several tokens of which one is rare; plain words (``magic``, ``retry``) are left to the
rare-token postings.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

WORD = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]*[A-Za-z0-9_])?")
_WORD_CHAR = re.compile(r"[A-Za-z0-9_]")
# ``NAME = ...`` with an optional declarer (RULER's ``VAR``, JS's ``let``...) and annotation
_ASSIGN = re.compile(
    r"^\s*(?:(?:VAR|var|let|const|export|set|local|my)\s+)?([A-Za-z_][\w.]*)\s*(?::[^=\n]*)?(?<![=!<>])=(?!=)\s*(.*)$"
)
_BARE = re.compile(r"(?:(?:VAR|var)\s+)?([A-Za-z_][\w.]*)\s*[;,]?\s*")


@dataclass(frozen=True)
class Word:
    text: str
    start: int  # token span [start, end) of the sequence it was read from
    end: int


def texts_of(tokens: Sequence[int], piece: Callable[[int], str]) -> tuple[str, list[int]]:
    """The text of ``tokens`` and each token's first character in it (one more at the end)."""
    offs = [0]
    parts = []
    for t in tokens:
        p = piece(int(t))
        parts.append(p)
        offs.append(offs[-1] + len(p))
    return "".join(parts), offs


def words(tokens: Sequence[int], piece: Callable[[int], str]) -> list[Word]:
    """The words of ``tokens``, each with the token span that spells it."""
    text, offs = texts_of(tokens, piece)
    out = []
    for m in WORD.finditer(text):
        a = bisect.bisect_right(offs, m.start()) - 1
        b = bisect.bisect_left(offs, m.end())
        out.append(Word(m.group(), max(a, 0), max(b, a + 1)))
    return out


def key_shaped(word: str) -> bool:
    """Shaped like an identifier or a value rather than a plain word."""
    if word.isdigit():
        return len(word) >= 4
    if any(c in "-_." for c in word.strip("-_.")):
        return any(c.isalpha() for c in word) or sum(c.isdigit() for c in word) >= 4
    has_digit, has_alpha = any(c.isdigit() for c in word), any(c.isalpha() for c in word)
    if has_digit and has_alpha:
        return True
    return len(word) >= 3 and any(c.isupper() for c in word[1:])


def boundary_ok(prev: str | None, first: str, last: str, nxt: str | None) -> bool:
    """A phrase found at this place is a whole word there, not part of a longer one."""
    if prev and first and _WORD_CHAR.match(first[0]) and _WORD_CHAR.match(prev[-1]):
        return False
    return not (nxt and last and _WORD_CHAR.match(last[-1]) and _WORD_CHAR.match(nxt[0]))


def assigned_names(line: str) -> list[str]:
    """Names an assignment line binds and, when its right side is a bare name, reads
    (``VAR X2 = VAR X1`` -> X2, X1; ``X = 12345`` -> X)."""
    m = _ASSIGN.match(line)
    if not m:
        return []
    out = [m.group(1)]
    rhs = m.group(2).strip()
    b = _BARE.fullmatch(rhs)
    if b and b.group(1) not in out:
        out.append(b.group(1))
    return out
