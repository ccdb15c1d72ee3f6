"""The model's own chat template (Jinja, from GGUF metadata), rendered in a sandbox.

The environment mirrors what the templates were written against: Hugging Face's
``apply_chat_template`` (``_compile_jinja_template``: loop controls, the ``{% generation %}`` tag,
a ``tojson`` that does not escape, ``raise_exception``, ``strftime_now``) plus the extra variables
llama.cpp's ``common/chat.cpp`` passes (``date_string``, ``datetime``, ``functions``), so
that every template llama.cpp ships renders here too.

Base models carry no template: they get a plain transcript that still reads naturally
as a completion prompt.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localsym.errors import LocalsymError

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Transformers' ``tojson``: Jinja's own HTML-escapes ``<>&'`` and takes no ``ensure_ascii``."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _Generation(jinja2.ext.Extension):
    """HF's ``{% generation %}...{% endgeneration %}``: marks assistant text for training masks.

    At inference it only renders its body; the body gets its own scope as in transformers'
    ``AssistantTracker`` (a call block), so ``set`` inside it does not leak out.
    """

    tags: set[str] = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Callable[[], str]) -> str:
        return caller()


def _fold_system(messages: list[Message]) -> list[Message] | None:
    """llama.cpp's fallback for templates without a system role: prepend its text to the next turn.

    A lone system turn becomes a user turn (llama.cpp drops it, which loses the text and leaves
    templates such as Gemma 2's indexing an empty list).
    """
    if not messages or messages[0].get("role") != "system":
        return None
    if len(messages) == 1:
        return [{**messages[0], "role": "user"}]
    first = dict(messages[1])
    first["content"] = messages[0]["content"] + "\n" + first["content"]
    return [first, *messages[2:]]


class ChatTemplate:
    def __init__(self, source: str | None, bos: str = "", eos: str = "") -> None:
        self.source = source
        self.bos, self.eos = bos, eos
        self._tmpl: jinja2.Template | None = None
        self._no_system = False  # learnt on the first render that a system turn makes the template raise
        if source:
            env = ImmutableSandboxedEnvironment(
                trim_blocks=True,
                lstrip_blocks=True,
                loader=jinja2.BaseLoader(),
                extensions=[_Generation, jinja2.ext.loopcontrols],
            )
            env.filters["tojson"] = _tojson
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = _strftime_now
            try:
                self._tmpl = env.from_string(source)
            except jinja2.TemplateError as e:
                raise LocalsymError(f"the model's chat template does not parse: {e}") from None

    @property
    def present(self) -> bool:
        return self._tmpl is not None

    def variables(self, add_generation_prompt: bool = True) -> dict[str, Any]:
        """What the template sees besides ``messages``: HF's names plus llama.cpp's extra context.

        ``tools`` and ``documents`` stay undefined (llama.cpp leaves ``tools`` out when there are none;
        transformers' ``None`` breaks templates that iterate it). ``functions`` is "" as llama.cpp sets it
        without tools: firefunction-v2 concatenates it as a string. ``enable_thinking`` stays
        undefined too, so each template falls back to its model's default as under transformers; llama.cpp
        forces it True because its server parses reasoning out, which localsym does not. Pass it to
        ``render`` to choose.
        """
        now = datetime.datetime.now()
        return {
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self.bos,
            "eos_token": self.eos,
            "date_string": now.strftime("%d %b %Y"),
            "datetime": now.strftime("%b %d %Y"),
            "functions": "",
        }

    @staticmethod
    def at_time(now: datetime.datetime) -> dict[str, Any]:
        """Variables that pin the template's idea of today (``date_string``, ``datetime``,
        ``strftime_now``) to ``now``: a session renders its frame at its creation date, or
        templates that write today's date (Llama 3.x) would change its blocks' keys daily."""
        return {
            "date_string": now.strftime("%d %b %Y"),
            "datetime": now.strftime("%b %d %Y"),
            "strftime_now": now.strftime,
        }

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True, **extra: Any) -> str:
        """The prompt text; the caller tokenizes it with special tokens parsed.

        ``extra`` overrides or adds template variables (e.g. ``enable_thinking=False``). A template
        that raises on a system turn (Gemma 2: "System role not supported") is rendered again with
        the system text folded into the next turn, as llama.cpp does.
        """
        msgs = [dict(m) for m in messages]
        if self._tmpl is None:
            lines = []
            for m in msgs:
                role = {"system": "", "user": "User: ", "assistant": "Assistant: "}.get(m["role"], "")
                lines.append(role + m["content"])
            text = "\n\n".join(lines)
            return text + ("\n\nAssistant:" if add_generation_prompt else "")
        ctx = self.variables(add_generation_prompt) | extra
        folded = _fold_system(msgs)
        if self._no_system and folded is not None:
            msgs = folded
        try:
            return self._tmpl.render(messages=msgs, **ctx)
        except Exception as e:  # noqa: BLE001 - anything a (foreign) template does wrong is its failure
            first = e
        if folded is not None and not self._no_system:
            try:
                text = self._tmpl.render(messages=folded, **ctx)
            except Exception:  # noqa: BLE001 - not a system-role refusal: report the first error
                raise _failed(first) from None
            self._no_system = True
            return text
        raise _failed(first) from None


def _failed(e: Exception) -> LocalsymError:
    why = str(e) if isinstance(e, jinja2.TemplateError) else f"{type(e).__name__}: {e}"
    return LocalsymError(f"the model's chat template failed: {why}")
