"""The model's own chat template (Jinja, from GGUF metadata), rendered in a sandbox.

Base models carry no template: they get a plain transcript that still reads naturally
as a completion prompt.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localsym.errors import LocalsymError

Message = dict[str, str]  # {"role": "system"|"user"|"assistant", "content": str}


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


class ChatTemplate:
    def __init__(self, source: str | None, bos: str = "", eos: str = "") -> None:
        self.source = source
        self.bos, self.eos = bos, eos
        self._tmpl = None
        if source:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                loader=jinja2.BaseLoader())
            env.globals["raise_exception"] = _raise
            env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
            try:
                self._tmpl = env.from_string(source)
            except jinja2.TemplateError as e:
                raise LocalsymError(f"the model's chat template does not parse: {e}") from None

    @property
    def present(self) -> bool:
        return self._tmpl is not None

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The prompt text; the caller tokenizes it with special tokens parsed."""
        if self._tmpl is None:
            lines = []
            for m in messages:
                role = {"system": "", "user": "User: ", "assistant": "Assistant: "}.get(m["role"], "")
                lines.append(role + m["content"])
            text = "\n\n".join(lines)
            return text + ("\n\nAssistant:" if add_generation_prompt else "")
        try:
            return self._tmpl.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos, eos_token=self.eos)
        except jinja2.TemplateError as e:
            raise LocalsymError(f"the model's chat template failed: {e}") from None
