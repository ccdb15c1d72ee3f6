"""The chat template cut into the pieces a working set is built from.

A session's hot context is ``sink + system + documents + close`` followed by turns, each
``user_prefix + question + user_suffix + answer + answer_end``, and every piece is decoded on
its own (documents and turns are cached and rearranged). The pieces are cut from the
template's own renders of whole conversations, around marker strings, and checked: the
pieces put together must give exactly the template's render of a longer conversation.

Two shapes, the first that checks out:

- **system**: the system text (and the documents after it) is the template's system turn.
- **folded**: templates that refuse a system role (Gemma 2), drop it, or move it (Mistral
  Nemo writes it before the *last* user message) get it as a user turn of its own, answered
  by an empty assistant turn, so that every later turn reads the same wherever it sits. This
  is llama.cpp's fold (the system text joins a user turn) made position-independent.

Templates that rewrite past turns (e.g. strip reasoning from earlier answers, or mark the
last user turn) cannot match a cached context exactly: the KV holds what the model saw when it
answered. For those the pieces follow the live turn (the question and the generation prompt
exactly as the template renders them), and ``exact`` is False.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from localsym.runtime.chat_template import ChatTemplate, Message
from localsym.runtime.engine import Engine

_MEM, _Q1, _A1, _Q2 = "\u2063MEM\u2063", "\u2063Q1\u2063", "\u2063A1\u2063", "\u2063Q2\u2063"


@dataclass
class FrameText:
    """The frame as text, before tokenizing: markup pieces and the system text apart."""

    sink: str  # the markup before the system text (BOS when the template writes it)
    system: str  # the system text as the template places it (plain text, never control tokens)
    close: str  # after the documents
    user_prefix: str
    user_suffix: str  # closes the user turn and opens the assistant's (the generation prompt)
    answer_end: str  # closes the assistant turn
    folded: bool = False  # the system text is a user turn of its own, answered by an empty turn
    exact: bool = True  # the pieces put together give the template's render of whole conversations
    # what the template writes before a past answer beyond the generation prompt (gpt-oss's
    # ``<|channel|>final<|message|>``, the space after ``Assistant:``): the model writes it itself
    answer_prefix: str = ""

    def assemble(self, documents: str, turns: list[tuple[str, str]], question: str) -> str:
        """The text a session's hot context holds: documents, answered turns (each answer as the
        model writes it: ``answer_prefix`` first), then a question."""
        out = self.sink + self.system + documents + self.close
        for q, a in turns:
            out += self.user_prefix + q + self.user_suffix + self.answer_prefix + a + self.answer_end
        return out + self.user_prefix + question + self.user_suffix

    @staticmethod
    def conversation(system: str, turns: list[tuple[str, str]], question: str, folded: bool) -> list[Message]:
        """The conversation ``assemble`` stands for, as the template is given it."""
        head: list[Message] = (
            [{"role": "user", "content": system}, {"role": "assistant", "content": ""}]
            if folded
            else [{"role": "system", "content": system}]
        )
        body: list[Message] = []
        for q, a in turns:
            body += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        return head + body + [{"role": "user", "content": question}]


def _common_prefix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _common_suffix(a: str, b: str) -> str:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return a[len(a) - n :]


def _cut(tpl: ChatTemplate, system: str, folded: bool, when: dict[str, Any]) -> FrameText | None:
    """The pieces from one render of ``system, Q1, A1, Q2`` with markers; None when the
    markers are not all there, in order, once each, with the system text before the first."""
    conv = FrameText.conversation(system + _MEM, [(_Q1, _A1)], _Q2, folded)
    try:
        text = tpl.render(conv, add_generation_prompt=True, **when)
    except Exception:  # noqa: BLE001 - a template that cannot take this shape: try the other
        return None
    marks = (_MEM, _Q1, _A1, _Q2)
    if any(text.count(m) != 1 for m in marks):
        return None
    at = [text.index(m) for m in marks]
    if at != sorted(at):
        return None
    head = text[: at[0]]
    if not head.endswith(system):
        return None
    sink = head[: len(head) - len(system)]
    gap1 = text[at[0] + len(_MEM) : at[1]]  # close + user_prefix
    gap_qa = text[at[1] + len(_Q1) : at[2]]  # user_suffix, in a past turn
    gap2 = text[at[2] + len(_A1) : at[3]]  # answer_end + user_prefix
    user_suffix = text[at[3] + len(_Q2) :]  # the generation prompt: what the live turn gets
    # the assistant turn's own end, as the template closes a last answer
    try:
        ended = tpl.render(conv[:-1], add_generation_prompt=False, **when)
        answer_end = _common_prefix(ended.split(_A1, 1)[1], gap2) if ended.count(_A1) == 1 else ""
    except Exception:  # noqa: BLE001 - fall back to the common suffix below
        answer_end = ""
    user_prefix = gap2[len(answer_end) :]
    if not gap1.endswith(user_prefix):
        user_prefix = _common_suffix(gap1, gap2)
        answer_end = gap2[: len(gap2) - len(user_prefix)]
    close = gap1[: len(gap1) - len(user_prefix)]
    exact = gap_qa.startswith(user_suffix)  # else past turns read otherwise than the live one
    answer_prefix = gap_qa[len(user_suffix) :] if exact else ""
    return FrameText(sink, system, close, user_prefix, user_suffix, answer_end, folded, exact, answer_prefix)


# the check: a conversation longer than the one the pieces were cut from, other text in it (no
# whitespace around each message: many templates trim contents, which no cut can undo)
_CHECK_DOC = "\n\n### notes.txt\nThe key is 7."
_CHECK_TURNS = [("What is the key?", "The key is 7."), ("And twice that?", "14.")]
_CHECK_Q = "Thanks. Anything else?"


def _checks(tpl: ChatTemplate, ft: FrameText, when: dict[str, Any]) -> bool:
    if not ft.exact:
        return False
    want = FrameText.conversation(ft.system + _CHECK_DOC, _CHECK_TURNS, _CHECK_Q, ft.folded)
    try:
        return tpl.render(want, add_generation_prompt=True, **when) == ft.assemble(_CHECK_DOC, _CHECK_TURNS, _CHECK_Q)
    except Exception:  # noqa: BLE001
        return False


def frame_text(tpl: ChatTemplate, system: str, now: datetime.datetime | None = None) -> FrameText:
    """The frame of a template as text: the first shape whose pieces reproduce the template's
    own render, else the first shape that can be cut (``exact`` False: see the module doc).
    ``now``: the date a template that writes today's date sees (default: today)."""
    when = ChatTemplate.at_time(now or datetime.datetime.now())
    cuts = [c for c in (_cut(tpl, system, False, when), _cut(tpl, system, True, when)) if c is not None]
    for c in cuts:
        if _checks(tpl, c, when):
            return c
    if not cuts:
        from localsym.errors import LocalsymError

        raise LocalsymError("the model's chat template does not place a conversation's messages in order")
    for c in cuts:
        c.exact = False
    return cuts[0]


@dataclass
class Frame:
    sink: list[int]  # BOS + system prompt opening, before the documents
    close: list[int]  # after the documents (closes the system turn)
    user_prefix: list[int]
    user_suffix: list[int]  # closes the user turn and opens the assistant's
    answer_end: list[int]  # closes the assistant turn
    folded: bool = False  # the system text sits in a user turn of its own (see the module doc)
    exact: bool = True

    @classmethod
    def of(cls, eng: Engine, system: str, now: datetime.datetime | None = None) -> Frame:
        """The template's pieces, tokenized: its markup with special tokens parsed, the system
        text as plain text (a system prompt that spells ``<|im_end|>`` stays text). Base
        models (no template) get a plain document, questions in completion form."""
        tpl = eng.template

        def tok(s: str) -> list[int]:
            return eng.model.tokenize(s, parse_special=True)

        def plain(s: str) -> list[int]:
            return eng.model.tokenize(s, parse_special=False)

        if not tpl.present:
            sink = eng.tokenize_prompt("") + (plain(system + "\n\n") if system else [])
            return cls(sink, tok("\n\n"), tok("Question: "), tok("\nAnswer:"), tok("\n\n"))
        ft = frame_text(tpl, system, now)
        return cls(
            eng.tokenize_prompt(ft.sink) + plain(ft.system),
            tok(ft.close),
            tok(ft.user_prefix),
            tok(ft.user_suffix),
            tok(ft.answer_end),
            ft.folded,
            ft.exact,
        )
