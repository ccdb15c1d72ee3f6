"""Bounds on a request body, checked before anything walks it: nesting depth (Python's JSON
parser and every recursive walk after it would otherwise meet a RecursionError), and text
that is not Unicode (a lone surrogate such as ``"\\ud800"`` parses, then fails to encode deep
inside tokenizing or writing)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

MAX_DEPTH = 64  # no request of either API nests anywhere near this
MAX_STRINGS = 1 << 20  # strings and containers walked per body (an 8 MiB body holds fewer)

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


class BoundsError(ValueError):
    """The body breaks a bound; the message says which, for the client."""


def json_depth(raw: bytes) -> int:
    """How deep the JSON text nests, brackets inside strings aside (no recursion)."""
    bare = np.frombuffer(_STRING.sub(b'""', raw), np.uint8)
    step = np.isin(bare, (ord("["), ord("{"))).astype(np.int32) - np.isin(bare, (ord("]"), ord("}")))
    return int(np.cumsum(step).max(initial=0))


def check_depth(raw: bytes) -> None:
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return  # too few brackets to nest past the bound
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise BoundsError(f"request body nests {depth} levels deep: at most {MAX_DEPTH}")


def check_text(value: Any) -> None:
    """Every string (and key) in a parsed body is encodable Unicode: no lone surrogates."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    seen = 0
    while stack:
        v, at = stack.pop()
        seen += 1
        if seen > MAX_STRINGS:
            raise BoundsError(f"request body holds more than {MAX_STRINGS} values")
        if isinstance(v, str):
            _check_str(v, at)
        elif isinstance(v, dict):
            for k, item in v.items():
                _check_str(k, at)
                stack.append((item, (*at, k)))
        elif isinstance(v, list):
            stack.extend((item, (*at, i)) for i, item in enumerate(v))


def _where(at: tuple[str | int, ...]) -> str:
    out = "body"
    for k in at:
        out += f"[{k}]" if isinstance(k, int) else f".{k.encode('ascii', 'backslashreplace').decode()}"
    return out


def _check_str(s: str, at: tuple[str | int, ...]) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BoundsError(
            f"{_where(at)}: text holds a lone surrogate (U+{ord(s[e.start]):04X}), which is not valid Unicode"
        ) from None
