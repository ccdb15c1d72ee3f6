"""Every chat template llama.cpp ships renders a real conversation, text kept verbatim.

The templates come from the pinned llama-cpp-python sdist (tests/llama_templates.py). Each is rendered
with and without the generation prompt, and, where llama-cpp-python's own Jinja2ChatFormatter manages
it too, compared with that: both follow transformers' environment, so they must agree.
"""

from __future__ import annotations

import datetime
from functools import cache
from pathlib import Path

import pytest
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from llama_templates import TemplatesUnavailable, templates_dir, unavailable

from localsym.errors import LocalsymError
from localsym.runtime.chat_template import ChatTemplate, Message

# Fetched at collection to parametrize over; when that fails, the parametrized tests are empty and the
# `templates` fixture fails with the reason (a collection error would stop the whole suite instead).
try:
    TEMPLATES: Path | None = templates_dir()
    _WHY = ""
except TemplatesUnavailable as e:
    TEMPLATES, _WHY = None, str(e)
FILES = sorted(TEMPLATES.glob("*.jinja")) if TEMPLATES else []
BOS, EOS = "<s>", "</s>"

# Non-ASCII, markup and Jinja-looking text: all of it must come through unescaped and unevaluated.
SYSTEM = "You are terse. Grüße, 你好, émoji 🙂 <b>&amp; \"q\" 'a' {{ x }}"
USER1 = 'First question: Grüße, 你好, émoji 🙂 <tag> & "quotes"'
ASSISTANT = "First answer — naïve café, 你好 🙂 {% raw %}"
USER2 = "Second question:\nline two, émoji 🙂\ttab"
MESSAGES: list[Message] = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": USER1},
    {"role": "assistant", "content": ASSISTANT},
    {"role": "user", "content": USER2},
]

# Templates whose output leaves the system text out. None of the shipped ones does (Gemma 2 raises on a
# system turn instead; ChatTemplate then folds it into the first user turn, as llama.cpp does).
DROPS_SYSTEM: dict[str, str] = {}

# Where llama-cpp-python's formatter raises, and why (ours renders all of these).
LCP_FAILS: dict[str, str] = {
    "CohereForAI-c4ai-command-r-plus-tool_use": "it passes tools=None, which the template iterates; "
    "llama.cpp and ChatTemplate leave tools undefined",
    "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use": "it passes tools=None, which the template iterates",
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": "it passes tools=None, which the template iterates",
    "fireworks-ai-llama-3-firefunction-v2": "it passes functions=None and no datetime; the template "
    'concatenates both as strings (llama.cpp passes "" and the date)',
    "google-gemma-2-2b-it": "the template raises 'System role not supported' and it does not fold the system "
    "text into the first user turn as llama.cpp does",
}

# Where both render but differ on purpose: the variables that explain it, handed to llama-cpp-python's
# formatter as extra context, must make the outputs equal.
_TODAY = datetime.date.today().strftime("%d %b %Y")
LCP_DIFFERS: dict[str, tuple[str, dict[str, str]]] = {
    name: (
        (
            "ChatTemplate passes llama.cpp's date_string (today); llama-cpp-python passes none, so the "
            "template's fixed 'Today Date: 26 Jul 2024' appears"
        ),
        {"date_string": _TODAY},
    )
    for name in ("meta-llama-Llama-3.1-8B-Instruct", "meta-llama-Llama-3.3-70B-Instruct")
}


@pytest.fixture
def templates() -> Path:
    if TEMPLATES is None:
        unavailable(_WHY)
    return TEMPLATES


@cache
def _ours(path: Path) -> ChatTemplate:
    return ChatTemplate(path.read_text(encoding="utf-8"), BOS, EOS)


def test_the_shipped_set_is_all_there(templates: Path) -> None:
    assert len(FILES) >= 60, f"only {len(FILES)} templates in {templates}"
    names = {p.stem for p in FILES}
    stale = (set(DROPS_SYSTEM) | set(LCP_FAILS) | set(LCP_DIFFERS)) - names
    assert not stale, f"listed here but not shipped: {sorted(stale)}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_renders_the_conversation_verbatim(path: Path) -> None:
    tmpl = _ours(path)
    assert tmpl.present
    for add_generation_prompt in (True, False):
        text = tmpl.render(MESSAGES, add_generation_prompt=add_generation_prompt)
        assert USER1 in text
        assert USER2 in text
        assert ASSISTANT in text
        if path.stem not in DROPS_SYSTEM:
            assert SYSTEM in text


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_agrees_with_llama_cpp_python(path: Path) -> None:
    theirs = Jinja2ChatFormatter(path.read_text(encoding="utf-8"), EOS, BOS)
    for add_generation_prompt in (True, False):
        # The flag is a plain attribute read on each call: set it rather than compile the template twice
        # (compiling is nearly all of this file's run time).
        theirs.add_generation_prompt = add_generation_prompt
        ours = _ours(path).render(MESSAGES, add_generation_prompt=add_generation_prompt)
        if path.stem in LCP_FAILS:
            with pytest.raises(Exception):  # noqa: B017 - any failure: it is theirs, we only record it
                theirs(messages=MESSAGES)
            continue
        if path.stem in LCP_DIFFERS:
            _, context = LCP_DIFFERS[path.stem]
            assert theirs(messages=MESSAGES).prompt != ours
            assert theirs(messages=MESSAGES, **context).prompt == ours
            continue
        assert theirs(messages=MESSAGES).prompt == ours


def test_system_role_refused_is_folded_into_the_first_user_turn(templates: Path) -> None:
    """Gemma 2 raises on a system turn; llama.cpp then prepends its text to the next message."""
    tmpl = ChatTemplate((templates / "google-gemma-2-2b-it.jinja").read_text(encoding="utf-8"), "<bos>", "<eos>")
    text = tmpl.render(MESSAGES[:2])
    assert text == f"<bos><start_of_turn>user\n{SYSTEM}\n{USER1}<end_of_turn>\n<start_of_turn>model\n"
    assert tmpl.render(MESSAGES[1:2]) == f"<bos><start_of_turn>user\n{USER1}<end_of_turn>\n<start_of_turn>model\n"
    # A lone system turn has no next turn to join: it becomes a user turn rather than being lost.
    assert (
        tmpl.render(MESSAGES[:1], add_generation_prompt=False) == f"<bos><start_of_turn>user\n{SYSTEM}<end_of_turn>\n"
    )


def test_environment_matches_transformers() -> None:
    """The pieces the shipped templates need, checked on their own: loop controls, {% generation %},
    tojson as transformers defines it, raise_exception, strftime_now, and caller-supplied variables."""
    src = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% generation %}{% set inner = 1 %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
        "{{ inner is defined }}|{{ messages[0] | tojson }}|{{ {'a': [1]} | tojson(indent=2) }}"
        "|{{ 'x' | tojson(ensure_ascii=True) }}|{{ strftime_now('%Y') }}|{{ enable_thinking is defined }}"
        "|{{ flag }}"
    )
    text = ChatTemplate(src).render(MESSAGES, flag="on")
    year = str(datetime.date.today().year)
    assert text == (
        "[" + USER1 + "]False|" + '{"role": "system", "content": "You are terse. Grüße, 你好, émoji 🙂 '
        '<b>&amp; \\"q\\" \'a\' {{ x }}"}|{\n  "a": [\n    1\n  ]\n}|"x"|' + year + "|False|on"
    )
    with pytest.raises(LocalsymError, match="chat template failed: nope"):
        ChatTemplate("{{ raise_exception('nope') }}").render(MESSAGES[1:])
    with pytest.raises(LocalsymError, match="TypeError"):
        ChatTemplate("{{ 'a' + none }}").render(MESSAGES[1:])


def test_sandboxed() -> None:
    with pytest.raises(LocalsymError, match="unsafe|not safely"):
        ChatTemplate("{{ messages.append(1) }}").render(MESSAGES[1:])
    with pytest.raises(LocalsymError):
        ChatTemplate("{{ ''.__class__.__mro__ }}").render(MESSAGES[1:])
