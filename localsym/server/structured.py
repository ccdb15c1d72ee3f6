"""Structured output: OpenAI's ``response_format`` and Ollama's ``format`` read into a
grammar (``json_object``/``"json"``: any JSON object; ``json_schema``/a schema object: a
value the schema validates), which the sampler enforces token by token. An answer cut by
``max_tokens`` ends early (``finish_reason: "length"``) and may not parse, as with OpenAI."""

from __future__ import annotations

from typing import Any

from localsym.errors import LocalsymError
from localsym.server.errors import ApiError
from localsym.session import json_grammar


def _grammar(schema: Any | None, param: str) -> str:
    try:
        return json_grammar(schema)
    except LocalsymError as e:
        raise ApiError(400, str(e), param=param) from None


def openai_grammar(body: dict[str, Any]) -> str | None:
    rf = body.get("response_format")
    if rf is None:
        return None
    if not isinstance(rf, dict) or rf.get("type") not in ("text", "json_object", "json_schema"):
        raise ApiError(
            400,
            'response_format must be {"type": "text" | "json_object" | "json_schema", ...}',
            param="response_format",
        )
    if rf["type"] == "text":
        return None
    if rf["type"] == "json_object":
        return _grammar(None, "response_format")
    js = rf.get("json_schema")
    if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
        raise ApiError(
            400, 'response_format json_schema needs {"json_schema": {"schema": {...}}}', param="response_format"
        )
    return _grammar(js.get("schema") or {"type": "object"}, "response_format")


def ollama_grammar(body: dict[str, Any]) -> str | None:
    fmt = body.get("format")
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return _grammar(None, "format")
    if isinstance(fmt, dict):
        return _grammar(fmt, "format")
    raise ApiError(400, 'format must be "json" or a JSON schema object', param="format")


def refuse_logprobs(body: dict[str, Any], *keys: str) -> None:
    """Token log-probabilities are not returned: asking for them is a 400, not silence."""
    for k in keys:
        if body.get(k) not in (None, False, 0):
            raise ApiError(400, f"{k} is not supported by this server", param=k)
