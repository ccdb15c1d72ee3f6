"""Reading requests: JSON bodies (bad JSON is a 400, never a 500), messages in either API's
form, sampling fields checked one by one with the field named in the error."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

from localsym.server.bounds import BoundsError, check_depth, check_text
from localsym.server.errors import ApiError
from localsym.server.guard import BodyTooLarge, too_large
from localsym.server.ledger import Msg

SESSION_HEADER = "x-localsym-session"
ROLES = ("system", "developer", "user", "assistant", "tool", "function")


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    try:
        raw = await request.body()
    except BodyTooLarge:
        raise too_large(limit) from None
    try:
        check_depth(raw)  # before the parser recurses
        body = json.loads(raw)
    except BoundsError as e:
        raise ApiError(400, str(e), "invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body nests too deeply", "invalid_json") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    try:
        check_text(body)
    except BoundsError as e:
        raise ApiError(400, str(e), "invalid_text") from None
    return body


def session_name(request: Request, body: dict[str, Any], user_field: bool) -> str | None:
    """The session a request names: the X-Localsym-Session header, else (OpenAI) ``user``."""
    name = request.headers.get(SESSION_HEADER)
    if not name and user_field:
        name = body.get("user")
        if name is not None and not isinstance(name, str):
            raise ApiError(400, "user must be a string", param="user")
    if isinstance(name, str) and name.startswith("ephemeral-"):
        raise ApiError(400, "session names starting with 'ephemeral-' are the server's own", param="session")
    return name or None


def fim_suffix(body: dict[str, Any]) -> str | None:
    """The text after the gap of a fill-in-the-middle request (OpenAI's and Ollama's
    ``suffix``), as editors send it (Continue, llama.vim); None when there is none."""
    suffix = body.get("suffix")
    if suffix is None:
        return None
    if not isinstance(suffix, str):
        raise ApiError(400, "suffix must be a string", param="suffix")
    return suffix


def content_text(content: Any, where: str) -> str:
    """A message's text: a string, or OpenAI's list of parts (text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type") in ("text", "input_text")
                and isinstance(part.get("text"), str)
            ):
                out.append(part["text"])
            elif isinstance(part, dict) and part.get("type") in ("image_url", "input_image", "input_audio"):
                raise ApiError(400, f"{where}: only text content is supported", param="messages")
            else:
                raise ApiError(400, f"{where}: bad content part", param="messages")
        return "".join(out)
    raise ApiError(400, f"{where}: content must be a string or a list of parts", param="messages")


def split_messages(messages: Any) -> tuple[str | None, list[Msg], str]:
    """(system prompt, earlier messages, the last user message). The leading system (or
    developer) messages are the system prompt; later ones stay in the history."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    msgs: list[Msg] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if role not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param="messages")
        msgs.append(Msg("system" if role == "developer" else role, content_text(m.get("content"), f"messages[{i}]")))
    system_parts = []
    while msgs and msgs[0].role == "system":
        system_parts.append(msgs.pop(0).text)
    if not msgs or msgs[-1].role != "user":
        raise ApiError(400, "the last message must be from the user", param="messages")
    if not msgs[-1].text.strip():
        raise ApiError(400, "the last user message is empty", param="messages")
    system = "\n\n".join(system_parts) if system_parts else None
    return system, msgs[:-1], msgs[-1].text


# -- sampling fields ------------------------------------------------------------------------------
def number(body: dict[str, Any], key: str, lo: float, hi: float, default: float) -> float:
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
        raise ApiError(400, f"{key} must be a number between {lo:g} and {hi:g}", param=key)
    return float(v)


def integer(body: dict[str, Any], key: str, lo: int, hi: int) -> int | None:
    """The field as an int, or None when absent."""
    v = body.get(key)
    if v is None:
        return None
    if (
        isinstance(v, bool)
        or not isinstance(v, (int, float))
        or (isinstance(v, float) and not v.is_integer())
        or not lo <= v <= hi
    ):
        raise ApiError(400, f"{key} must be an integer between {lo} and {hi}", param=key)
    return int(v)


def stops(body: dict[str, Any], key: str = "stop") -> tuple[str, ...]:
    v = body.get(key)
    if v is None:
        return ()
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or len(v) > 16 or not all(isinstance(s, str) for s in v):
        raise ApiError(400, f"{key} must be a string or a list of at most 16 strings", param=key)
    return tuple(s for s in v if s)
