"""Structured output and tool calls (#27) through `localsym serve`, driven by the real `openai`
and `ollama` clients: JSON answers enforced by llama.cpp's grammar sampler on SmolLM2, and tool
calls on SmolLM2 re-templated with Qwen 2.5's real template (one of those llama.cpp ships),
which shows tools to the model and shares SmolLM2's ChatML markup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import ollama
import openai
import pytest
from conftest import SMOL, module_home
from gguf_retemplate import with_template
from llama_templates import TemplatesUnavailable, templates_dir, unavailable
from test_server import Server

from localsym.server.tools import CallFilter, parse_answer, template_style

TOOLS_MODEL = "smol-qwen-tools"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
        },
    },
}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
    },
    "required": ["name", "age", "colors"],
    "additionalProperties": False,
}


def _qwen_template() -> str:
    try:
        return (templates_dir() / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    except TemplatesUnavailable as e:
        unavailable(str(e))


@pytest.fixture(scope="module")
def home(tmp_path_factory, smol_path) -> Iterator[Path]:
    with module_home(tmp_path_factory, "tools") as h:
        yield h


@pytest.fixture(scope="module")
def smol(home) -> Iterator[Server]:
    s = Server(home)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def tools_server(home, smol_path) -> Iterator[Server]:
    """SmolLM2's weights under Qwen 2.5's chat template, registered as ``smol-qwen-tools``."""
    import os
    import subprocess
    import sys

    dst = with_template(smol_path, home.parent / f"{TOOLS_MODEL}.gguf", _qwen_template())
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "localsym", "pull", str(dst)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    s = Server(home, "--model", TOOLS_MODEL)
    yield s
    s.stop()


# -- structured output ----------------------------------------------------------------------------
def test_json_schema_answers_parse_and_validate(smol):
    """20 of 20 answers to varied questions, under a schema, parse and validate (the #27 bar)."""
    client = smol.oa()
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    subjects = ["a pilot", "a child", "a painter", "my aunt", "a robot"]
    ok = 0
    for i in range(20):
        r = client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": f"Describe {subjects[i % 5]} as JSON."}],
            response_format=fmt,  # type: ignore[arg-type]
            max_tokens=80,
            temperature=0.8 if i >= 5 else 0,
            seed=i,
        )
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content or ""), PERSON)
        ok += 1
    assert ok == 20


def test_json_object_streamed_and_ollama_format(smol):
    client = smol.oa()
    chunks = client.chat.completions.create(
        model=SMOL,
        messages=[{"role": "user", "content": "List two fruits as JSON."}],
        response_format={"type": "json_object"},
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert isinstance(json.loads(text), dict)

    oc = ollama.Client(host=smol.url)
    r = oc.chat(
        model=SMOL,
        messages=[{"role": "user", "content": "List two fruits as JSON."}],
        format="json",
        options={"temperature": 0, "num_predict": 120},
    )
    assert isinstance(json.loads(r.message.content or ""), dict)
    r = oc.chat(
        model=SMOL,
        messages=[{"role": "user", "content": "Describe a pilot."}],
        format=PERSON,
        options={"temperature": 0, "num_predict": 80},
    )
    jsonschema.validate(json.loads(r.message.content or ""), PERSON)
    g = oc.generate(model=SMOL, prompt="A dog, as JSON.", format=PERSON, options={"temperature": 0, "num_predict": 80})
    jsonschema.validate(json.loads(g.response), PERSON)


def test_refusals_are_clear_4xx(smol):
    """What this server cannot do is a 400 in the API's own error shape, never silence."""
    client = smol.oa()
    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        {"tools": [WEATHER]},  # SmolLM2's template does not show tools to the model
        {"logprobs": True},
        {"response_format": {"type": "xml"}},
        {"response_format": {"type": "json_schema", "json_schema": {"schema": "nope"}}},
        {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "other"}}},
        {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
        {"tool_choice": "required"},
    ]
    for extra in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=SMOL, messages=msgs, max_tokens=4, **extra)  # type: ignore[arg-type]
        assert e.value.body and e.value.body.get("message"), extra
    r = httpx.post(f"{smol.url}/v1/chat/completions", json={"messages": msgs, "tools": [WEATHER]}, timeout=60)
    assert r.status_code == 400 and "cannot express tools" in r.json()["error"]["message"]
    for body in (
        {"model": SMOL, "messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]},
        {"model": SMOL, "messages": msgs, "format": 7},
        {"model": SMOL, "messages": msgs, "tools": [WEATHER]},
    ):
        r = httpx.post(f"{smol.url}/api/chat", json=body, timeout=60)
        assert r.status_code == 400 and isinstance(r.json()["error"], str), body
    show = httpx.post(f"{smol.url}/api/show", json={"model": SMOL}, timeout=60).json()
    assert "tools" not in show["capabilities"]


# -- tool calls -------------------------------------------------------------------------------------
def test_openai_tool_round_trip(tools_server):
    """The `openai` SDK's round trip: a forced call, the tool's result sent back, an answer."""
    client = tools_server.oa()
    msgs: list = [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(
        model=TOOLS_MODEL, messages=msgs, tools=[WEATHER], tool_choice="required", max_tokens=60, temperature=0
    )
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and ch.message.tool_calls
    call = ch.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    assert r.model_extra["localsym"]["mode"] == "conversation"
    msgs += [
        ch.message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 18, "sky": "sunny"})},
    ]
    r2 = client.chat.completions.create(model=TOOLS_MODEL, messages=msgs, tools=[WEATHER], max_tokens=24, temperature=0)
    assert r2.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r2.choices[0].message.content or r2.choices[0].message.tool_calls
    # tool_choice "none": no tools shown, no calls parsed; plain text comes back
    r3 = client.chat.completions.create(
        model=TOOLS_MODEL, messages=msgs[:1], tools=[WEATHER], tool_choice="none", max_tokens=8, temperature=0
    )
    assert r3.choices[0].message.tool_calls is None and r3.choices[0].message.content


def test_openai_named_tool_streamed(tools_server):
    """A named function, streamed: OpenAI's deltas (id, type, name and empty arguments first,
    then the arguments), finish_reason tool_calls."""
    client = tools_server.oa()
    chunks = list(
        client.chat.completions.create(
            model=TOOLS_MODEL,
            messages=[{"role": "user", "content": "Is it raining in Oslo?"}],
            tools=[WEATHER, {"type": "function", "function": {"name": "noop"}}],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
            temperature=0,
            stream=True,
        )
    )
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    first = deltas[0][0]
    assert first.id and first.type == "function" and first.function.name == "get_weather"
    args = "".join(d[0].function.arguments or "" for d in deltas)
    jsonschema.validate(json.loads(args), WEATHER["function"]["parameters"])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"


def test_ollama_tools(tools_server):
    oc = ollama.Client(host=tools_server.url)
    show = oc.show(TOOLS_MODEL)
    assert "tools" in (show.capabilities or [])
    # Ollama has no tool_choice: the model decides; send what it needs to call (a past call
    # answered, then a new question), and check the shape either way
    msgs = [{"role": "user", "content": "What is the weather in Rome?"}]
    r = oc.chat(model=TOOLS_MODEL, messages=msgs, tools=[WEATHER], options={"temperature": 0, "num_predict": 60})
    assert r.message.content or r.message.tool_calls
    past = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}],
    }
    msgs += [past, {"role": "tool", "content": '{"temp_c": 21}', "tool_name": "get_weather"}]
    r = oc.chat(model=TOOLS_MODEL, messages=msgs, tools=[WEATHER], options={"temperature": 0, "num_predict": 24})
    assert r.done and (r.message.content or r.message.tool_calls)
    parts = list(
        oc.chat(
            model=TOOLS_MODEL,
            messages=msgs,
            tools=[WEATHER],
            stream=True,
            options={"temperature": 0, "num_predict": 24},
        )
    )
    assert parts[-1].done


# -- markup, without a server ---------------------------------------------------------------------
NAMES = {"get_weather"}


def test_parsers_per_family():
    """Fixed model outputs in each family's markup (llama.cpp's common/chat.cpp formats)."""
    h = parse_answer(
        'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>', "hermes", NAMES
    )
    assert h.content == "Sure." and h.calls[0]["arguments"] == {"city": "Oslo"}
    two = parse_answer(
        '<tool_call>{"name": "get_weather", "arguments": {"city": "A"}}</tool_call>'
        '<tool_call>{"name": "get_weather", "arguments": "{\\"city\\": \\"B\\"}"}</tool_call>',
        "hermes",
        NAMES,
    )
    assert [c["arguments"]["city"] for c in two.calls] == ["A", "B"]
    assert parse_answer('<tool_call>{"name": "unknown", "arguments": {}}</tool_call>', "hermes", NAMES).calls == []
    l3 = parse_answer('{"name": "get_weather", "parameters": {"city": "Oslo"}}', "llama3", NAMES)
    assert l3.calls and l3.content == ""
    m = parse_answer(
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Oslo"}, "id": "abc123def"}]', "mistral", NAMES
    )
    assert m.calls[0]["name"] == "get_weather"
    g = parse_answer('{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Oslo"}}]}', "generic", NAMES)
    assert g.calls
    assert parse_answer("It is sunny.", "generic", NAMES).calls == []
    assert parse_answer('{"weather": "sunny"}', "llama3", NAMES).content == '{"weather": "sunny"}'


def test_call_filter_streams_text_and_holds_calls():
    f = CallFilter("hermes")
    out = "".join(
        f.feed(p)
        for p in [
            "Let me ",
            "check. <tool",
            '_call>\n{"name": "get_weather", ',
            '"arguments": {"city": "Oslo"}}\n</tool_call>',
        ]
    )
    assert out == "Let me check. "
    done = f.finish(NAMES)
    assert done.calls and done.content == ""
    f = CallFilter("llama3")
    assert "".join(f.feed(p) for p in [" ", "Hello", " there"]) == " Hello there"


def test_template_styles_of_llama_cpp_templates():
    """Each family is told apart on the real templates llama.cpp ships; SmolLM2-style
    templates without tools are not taken for tool templates."""
    try:
        d = templates_dir()
    except TemplatesUnavailable as e:
        unavailable(str(e))
    want = {
        "Qwen-Qwen2.5-7B-Instruct.jinja": "hermes",
        "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use.jinja": "hermes",
        "meta-llama-Llama-3.1-8B-Instruct.jinja": "llama3",
        "mistralai-Mistral-Nemo-Instruct-2407.jinja": "mistral",
        "google-gemma-2-2b-it.jinja": None,
    }
    for name, style in want.items():
        assert template_style((d / name).read_text()) == style, name
