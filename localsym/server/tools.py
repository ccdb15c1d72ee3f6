"""Tool calls: the request's ``tools``/``tool_choice`` read and checked, the conversation
put in the shape chat templates expect (OpenAI's, which Hugging Face's templates follow),
and the model's answer cut into text and calls, per template family as llama.cpp's
``common/chat.cpp`` does:

- ``hermes``: Hermes 2 Pro, Qwen 2.5/3 and others: ``<tool_call>{"name", "arguments"}</tool_call>``,
  any number of them, text around them;
- ``llama3``: Llama 3.1-3.3: the whole answer is ``{"name", "parameters"}`` (after
  ``<|python_tag|>``, a control token the answer's text does not show), ``;``-separated;
- ``mistral``: ``[TOOL_CALLS][{"name", "arguments"}, ...]`` (the marker is a control token too);
- ``generic``: any other template that shows the tools to the model: an answer that is a
  JSON call object (``name`` plus ``arguments`` or ``parameters``), a list of them, or
  ``{"tool_call": ...}``/``{"tool_calls": [...]}``.

A template that does not show the tools to the model (rendered with a probe tool, the probe's
name is not in the prompt) cannot express tools: the request is refused with a 400.
``tool_choice`` ``required`` or a named function is enforced with a grammar that admits only
a call in the family's markup; ``none`` renders no tools and parses no calls.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

from localsym.server.errors import ApiError
from localsym.server.inputs import content_text
from localsym.session import ChatTemplate, GenParams, tool_call_grammar

_PROBE = "localsym_probe_function_7c1"
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


@dataclass
class ToolSpec:
    functions: list[dict[str, Any]]  # {"name", "description"?, "parameters"?}
    choice: str = "auto"  # auto, required, none, named
    named: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.functions) and self.choice != "none"

    def template_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` variable templates get: OpenAI's ``{"type": "function", "function": ...}``."""
        return [{"type": "function", "function": f} for f in self.functions]

    def grammar(self, style: str) -> str | None:
        """The grammar that enforces ``required`` or a named function; None for ``auto``."""
        if self.choice == "required":
            return tool_call_grammar(self.functions, style)
        if self.choice == "named":
            return tool_call_grammar([f for f in self.functions if f["name"] == self.named], style)
        return None


def read_tools(body: dict[str, Any]) -> ToolSpec | None:
    """``tools`` and ``tool_choice`` of either API (Ollama has no ``tool_choice``); None when
    the request has no tools."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if tools is None or tools == []:
        if choice not in (None, "none", "auto"):
            raise ApiError(400, "tool_choice needs tools", param="tool_choice")
        return None
    if not isinstance(tools, list) or len(tools) > 128:
        raise ApiError(400, "tools must be a list of at most 128 tools", param="tools")
    functions = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict):
            raise ApiError(400, f'tools[{i}] must be {{"type": "function", "function": {{...}}}}', param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ApiError(400, f"tools[{i}].function.name must be 1-64 letters, digits, _ . : or -", param="tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ApiError(400, f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
        desc = fn.get("description")
        if desc is not None and not isinstance(desc, str):
            raise ApiError(400, f"tools[{i}].function.description must be a string", param="tools")
        f: dict[str, Any] = {"name": name}
        if desc:
            f["description"] = desc
        f["parameters"] = params if params else {"type": "object", "properties": {}}
        functions.append(f)
    if len({f["name"] for f in functions}) != len(functions):
        raise ApiError(400, "tools must have distinct names", param="tools")
    spec = ToolSpec(functions)
    if choice is None or choice == "auto":
        spec.choice = "auto"
    elif choice in ("none", "required"):
        spec.choice = choice
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in {f["name"] for f in functions}:
            raise ApiError(400, f"tool_choice names {name!r}, which is not among the tools", param="tool_choice")
        spec.choice, spec.named = "named", name
    else:
        raise ApiError(
            400,
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return spec


# -- the conversation as templates want it ---------------------------------------------------------
def has_tool_turns(messages: Any) -> bool:
    """Whether the messages hold tool results or past calls (they need the template's own markup)."""
    return isinstance(messages, list) and any(
        isinstance(m, dict) and (m.get("role") in ("tool", "function") or m.get("tool_calls")) for m in messages
    )


def _arguments(v: Any, where: str) -> Any:
    """A call's arguments as templates want them: an object (OpenAI sends a JSON string)."""
    if isinstance(v, str):
        try:
            return json.loads(v) if v.strip() else {}
        except ValueError:
            raise ApiError(400, f"{where}.arguments is not valid JSON", param="messages") from None
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ApiError(400, f"{where}.arguments must be an object or a JSON string", param="messages")
    return v


def template_messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI's or Ollama's messages as chat templates read them: ``content`` a string,
    assistant ``tool_calls`` with ``function.arguments`` an object, ``tool`` turns with
    ``tool_call_id`` and ``name`` where known. The last message must be the user's or a tool's."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    out: list[dict[str, Any]] = []
    names_by_id: dict[str, str] = {}
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{where} must be an object", param="messages")
        role = m.get("role")
        if role not in ("system", "developer", "user", "assistant", "tool", "function"):
            raise ApiError(400, f"{where}.role is not a chat role", param="messages")
        if m.get("images"):
            raise ApiError(400, f"{where}: images are not supported: this server runs text models", param="messages")
        msg: dict[str, Any] = {
            "role": {"developer": "system", "function": "tool"}.get(role, role),
            "content": content_text(m.get("content"), where),
        }
        calls = m.get("tool_calls")
        if calls:
            if role != "assistant" or not isinstance(calls, list):
                raise ApiError(400, f"{where}.tool_calls must be a list on an assistant message", param="messages")
            tc = []
            for j, c in enumerate(calls):
                fn = c.get("function") if isinstance(c, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ApiError(400, f"{where}.tool_calls[{j}] needs function.name", param="messages")
                cid = c.get("id") if isinstance(c.get("id"), str) else f"call_{i}_{j}"
                names_by_id[cid] = fn["name"]
                args = _arguments(fn.get("arguments"), f"{where}.tool_calls[{j}].function")
                tc.append({"id": cid, "type": "function", "function": {"name": fn["name"], "arguments": args}})
            msg["tool_calls"] = tc
        if msg["role"] == "tool":
            cid = m.get("tool_call_id")
            if isinstance(cid, str):
                msg["tool_call_id"] = cid
            name = m.get("name") or m.get("tool_name") or (names_by_id.get(cid) if isinstance(cid, str) else None)
            if isinstance(name, str):
                msg["name"] = name
        out.append(msg)
    if out[-1]["role"] not in ("user", "tool"):
        raise ApiError(400, "the last message must be from the user or a tool", param="messages")
    return out


# -- the template's family -------------------------------------------------------------------------
def template_style(source: str | None) -> str | None:
    """The family of a template's tool-call markup; None when it cannot show tools to the model."""
    if not source:
        return None
    tpl = ChatTemplate(source)
    probe = [{"type": "function", "function": {"name": _PROBE, "description": "probe", "parameters": {}}}]
    try:
        text = tpl.render([{"role": "user", "content": "hi"}], True, tools=probe)
    except Exception:  # noqa: BLE001 - a template that fails with tools cannot take them
        return None
    if _PROBE not in text:
        return None
    if "<tool_call>" in source:
        return "hermes"
    if "[TOOL_CALLS]" in source:
        return "mistral"
    if "<|start_header_id|>" in source and ("<|python_tag|>" in source or "ipython" in source):
        return "llama3"
    return "generic"


# -- the answer cut into text and calls ------------------------------------------------------------
@dataclass
class Parsed:
    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)  # {"id", "name", "arguments" (object)}


def _call(obj: Any, names: set[str]) -> dict[str, Any] | None:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("function"), dict):  # {"type": "function", "function": {...}}
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "name": name, "arguments": args}


def _calls_in(value: Any, names: set[str]) -> list[dict[str, Any]] | None:
    """The calls a parsed JSON value holds (a call, a list of calls, ``tool_call(s)``); None if not all are."""
    if isinstance(value, dict) and ("tool_calls" in value or "tool_call" in value):
        value = value.get("tool_calls", value.get("tool_call"))
    items = value if isinstance(value, list) else [value]
    calls = [_call(v, names) for v in items]
    if not calls or any(c is None for c in calls):
        return None
    return [c for c in calls if c is not None]


def _json_prefix(text: str) -> tuple[Any, int] | None:
    try:
        return json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None


def parse_answer(text: str, style: str, names: set[str]) -> Parsed:
    """The model's answer as text and calls. What does not parse as a call of a known tool
    stays text, as it came."""
    if style == "hermes":
        calls: list[dict[str, Any]] = []
        rest: list[str] = []
        at = 0
        for m in re.finditer(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text, re.S):
            got = _json_prefix(m.group(1))
            found = _calls_in(got[0], names) if got else None
            if found is None:
                continue
            rest.append(text[at : m.start()])
            at = m.end()
            calls += found
        rest.append(text[at:])
        return Parsed("".join(rest).strip() if calls else text, calls)
    body = text.strip()
    for marker in ("<|python_tag|>", "[TOOL_CALLS]"):
        if body.startswith(marker):
            body = body[len(marker) :].lstrip()
    if not body.startswith(("{", "[")):
        return Parsed(text)
    calls = []
    while body:
        got = _json_prefix(body)
        found = _calls_in(got[0], names) if got else None
        if got is None or found is None:
            return Parsed(text)
        calls += found
        body = body[got[1] :].lstrip().lstrip(";").lstrip()
    return Parsed("", calls)


class CallFilter:
    """Streams an answer's text while holding back what may be a tool call: for ``hermes``
    everything from the first ``<tool_call>`` (or what may be its start), for the others an
    answer that begins with ``{`` or ``[`` (a call is the whole answer there)."""

    MARK = "<tool_call>"

    def __init__(self, style: str) -> None:
        self.style = style
        self.sent = ""
        self.held = ""
        self.holding = False  # from here on everything is held

    def feed(self, piece: str) -> str:
        if self.holding:
            self.held += piece
            return ""
        buf = self.held + piece
        if self.style == "hermes":
            i = buf.find(self.MARK)
            if i >= 0:
                self.holding, self.held = True, buf[i:]
                return self._send(buf[:i])
            keep = max((k for k in range(1, len(self.MARK)) if buf.endswith(self.MARK[:k])), default=0)
            self.held = buf[len(buf) - keep :] if keep else ""
            return self._send(buf[: len(buf) - keep])
        if not (self.sent + buf).strip():
            self.held = buf
            return ""
        if not self.sent and buf.lstrip().startswith(("{", "[")):
            self.holding, self.held = True, buf
            return ""
        self.held = ""
        return self._send(buf)

    def _send(self, s: str) -> str:
        self.sent += s
        return s

    def finish(self, names: set[str]) -> Parsed:
        """At the answer's end: the calls in what was held, and the text of it still to send."""
        return parse_answer(self.held, self.style, names)


# -- a chat request with tools ------------------------------------------------------------------
_STYLES: dict[str, str | None] = {}


def model_style(model: str) -> str | None:
    """The tool-call family of the served model's template (read from its header once)."""
    if model not in _STYLES:
        from localsym.session import model_card

        _STYLES[model] = template_style(model_card(model)["template"])
    return _STYLES[model]


@dataclass
class ToolUse:
    """How a chat request meets tools: ``style`` and ``names`` when its answer may hold calls."""

    style: str | None = None
    names: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.style is not None


def plan_tools(
    body: dict[str, Any], model: str, params: GenParams
) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None, GenParams, ToolUse]:
    """(the conversation for ``Session.ask_conversation`` or None when the request is a plain
    chat, the template's ``tools``, the params with the tool grammar, how to read the answer)."""
    spec = read_tools(body)
    messages = body.get("messages")
    active = spec is not None and spec.active
    if not active and not has_tool_turns(messages):
        return None, None, params, ToolUse()
    conversation = template_messages(messages)
    if not active:
        return conversation, None, params, ToolUse()
    assert spec is not None
    if params.grammar:
        raise ApiError(400, "a response format cannot be combined with tools", param="response_format")
    style = model_style(model)
    if style is None:
        raise ApiError(
            400,
            f"the chat template of {model!r} cannot express tools (it does not show them to the model); "
            "use a model whose template has tool support",
            "tools_not_supported",
            param="tools",
        )
    params = replace(params, grammar=spec.grammar(style))
    return conversation, spec.template_tools(), params, ToolUse(style, {f["name"] for f in spec.functions})
