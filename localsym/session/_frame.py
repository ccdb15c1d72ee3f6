"""The chat template cut into the pieces a working set is built from."""

from __future__ import annotations

from dataclasses import dataclass

from localsym.runtime.engine import Engine


@dataclass
class Frame:
    sink: list[int]  # BOS + system prompt opening, before the documents
    close: list[int]  # after the documents (closes the system turn)
    user_prefix: list[int]
    user_suffix: list[int]  # closes the user turn and opens the assistant's
    answer_end: list[int]  # closes the assistant turn

    @classmethod
    def of(cls, eng: Engine, system: str) -> Frame:
        """Render the template around marker strings and split on them, so documents, the
        question and the answer can each be decoded on their own and still read as one
        conversation. Base models (no template) get a plain document, questions in
        completion form."""
        tpl = eng.template

        def tok(s: str) -> list[int]:
            return eng.model.tokenize(s, parse_special=True)

        if not tpl.present:
            sink = eng.tokenize_prompt(system + "\n\n") if system else eng.tokenize_prompt("")
            return cls(sink, tok("\n\n"), tok("Question: "), tok("\nAnswer:"), tok("\n\n"))
        m1, m2, m3 = "\u2063MEM\u2063", "\u2063Q\u2063", "\u2063A\u2063"
        sys_only = tpl.render([{"role": "system", "content": system + m1}], add_generation_prompt=False)
        with_q = tpl.render(
            [{"role": "system", "content": system + m1}, {"role": "user", "content": m2}], add_generation_prompt=True
        )
        with_a = tpl.render(
            [
                {"role": "system", "content": system + m1},
                {"role": "user", "content": m2},
                {"role": "assistant", "content": m3},
            ],
            add_generation_prompt=False,
        )
        sink_text, close_text = sys_only.split(m1)
        after_close = with_q[len(sys_only) :]
        user_prefix, user_suffix = after_close.split(m2)
        answer_end = with_a.split(m3)[1]
        return cls(eng.tokenize_prompt(sink_text), tok(close_text), tok(user_prefix), tok(user_suffix), tok(answer_end))
