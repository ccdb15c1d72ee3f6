"""GBNF grammars for constrained answers: JSON (any object, or one JSON schema) and tool
calls in a chat template's own markup. The bridge's ``Sampler`` enforces them.

Schemas go through llama-cpp-python's converter (``json_schema_to_gbnf``, a port of
llama.cpp's ``json-schema-to-grammar``), with one mend: its strings admit raw control
characters (a newline inside a string), which no strict JSON parser accepts, so string
characters exclude U+0000-U+001F and U+007F as llama.cpp's own converter does.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llama_cpp.llama_grammar import json_schema_to_gbnf

from localsym.errors import LocalsymError

_CHAR_RULE = re.compile(r'^char ::= \[\^"\\\\\] \|', re.M)
_STRICT_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


def _convert(schema: Any) -> str:
    if not isinstance(schema, dict) and not isinstance(schema, bool):
        raise LocalsymError("a JSON schema must be an object")
    try:
        gbnf = json_schema_to_gbnf(json.dumps(schema))
    except RecursionError:
        raise LocalsymError("the JSON schema nests too deeply") from None
    except Exception as e:  # noqa: BLE001 - the converter raises plain exceptions for what it cannot express
        raise LocalsymError(f"the JSON schema cannot be turned into a grammar: {e}") from None
    return _CHAR_RULE.sub(lambda _: _STRICT_CHAR, gbnf)


def json_grammar(schema: Any | None = None) -> str:
    """A grammar for one JSON value: any object when ``schema`` is None (OpenAI's
    ``json_object``, Ollama's ``"json"``), else a value ``schema`` validates."""
    return _convert({"type": "object"} if schema is None else schema)


def _rename_root(gbnf: str, name: str) -> str:
    return re.sub(r"^root ::=", f"{name} ::=", gbnf, count=1, flags=re.M)


def call_schema(tools: list[dict[str, Any]], args_key: str = "arguments") -> dict[str, Any]:
    """The JSON schema of one call of any of ``tools`` (OpenAI's function objects):
    ``{"name": <one of them>, args_key: <its parameters>}``, name first."""
    alts = []
    for t in tools:
        params = t.get("parameters")
        if not isinstance(params, dict) or not params:
            params = {"type": "object"}
        alts.append(
            {
                "type": "object",
                "properties": {"name": {"const": t["name"]}, args_key: params},
                "required": ["name", args_key],
            }
        )
    return alts[0] if len(alts) == 1 else {"anyOf": alts}


def tool_call_grammar(tools: list[dict[str, Any]], style: str) -> str:
    """A grammar for an answer that is exactly one call of one of ``tools``, written in
    ``style``'s markup (see ``localsym.server.tools``): ``hermes`` wraps the JSON in
    ``<tool_call>...</tool_call>``, ``mistral`` writes a JSON list of calls, ``llama3``
    the call object with ``parameters``, ``generic`` the call object."""
    args_key = "parameters" if style == "llama3" else "arguments"
    body = _rename_root(_convert(call_schema(tools, args_key)), "localsym-call")
    if style == "hermes":
        root = 'root ::= "<tool_call>" "\\n"? localsym-call "\\n"? "</tool_call>"'
    elif style == "mistral":
        root = 'root ::= "[" localsym-call "]"'
    else:
        root = "root ::= localsym-call"
    return root + "\n" + body
