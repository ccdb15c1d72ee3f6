"""The grammar sampler (#27) on the real SmolLM2: answers follow the grammar, the grammar is
checked on the sampled token first (the whole vocabulary only when it rejects it), and bad
grammars or schemas are errors, not crashes."""

from __future__ import annotations

import json

import jsonschema
import pytest

from localsym.errors import LocalsymError
from localsym.runtime.bridge import Sampler
from localsym.runtime.engine import GenParams, GenStats
from localsym.runtime.grammar import json_grammar, tool_call_grammar

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "rain": {"type": "boolean"}},
    "required": ["city", "rain"],
}


def _answer(eng, question: str, params: GenParams) -> tuple[str, GenStats]:
    eng.ctx.clear()
    st = GenStats()
    toks = eng.chat_tokens([{"role": "user", "content": question}])
    text = "".join(eng.generate(toks, 0, params, stats=st))
    eng.ctx.clear()
    return text, st


def test_schema_answers_validate_and_grammar_checks_sampled_token_first(smol_engine):
    for temp, seed in ((0.0, 0), (1.0, 1), (1.0, 2)):
        text, st = _answer(
            smol_engine,
            "Will it rain in Oslo?",
            GenParams(max_tokens=60, temp=temp, seed=seed, grammar=json_grammar(SCHEMA)),
        )
        assert st.stop_reason == "eog", text
        jsonschema.validate(json.loads(text), SCHEMA)
        # most tokens pass the check on their own; only rejected ones are sampled again
        assert 0 < st.grammar_resampled < st.completion_tokens


def test_tool_call_grammar_forces_the_markup(smol_engine):
    tools = [
        {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 12}},
                "required": ["city"],
            },
        }
    ]
    text, st = _answer(smol_engine, "Hello!", GenParams(max_tokens=60, grammar=tool_call_grammar(tools, "hermes")))
    assert text.startswith("<tool_call>") and text.rstrip().endswith("</tool_call>")
    call = json.loads(text[len("<tool_call>") : text.rindex("</tool_call>")])
    assert call["name"] == "get_weather" and isinstance(call["arguments"]["city"], str)


def test_bad_grammars_are_errors(smol_engine):
    with pytest.raises(LocalsymError):
        Sampler(grammar="root ::= (", model=smol_engine.model)
    with pytest.raises(LocalsymError):
        json_grammar("not a schema")
    with pytest.raises(LocalsymError):
        json_grammar({"$ref": "https://example.com/remote.json"})
