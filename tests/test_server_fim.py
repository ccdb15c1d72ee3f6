"""Fill in the middle (#27): an editor's ``prompt`` + ``suffix`` on ``/v1/completions`` and
Ollama's ``/api/generate`` go to the model as its own markers, ``[FIM_PRE] prompt [FIM_SUF]
suffix [FIM_MID]`` (llama.cpp's infill order), through a real `localsym serve`. Neither test
model has the markers, so SmolLM2 is copied with three of its control tokens named as them in
its GGUF (``tokenizer.ggml.fim_*_token_id``, as code models name theirs); a model without
them answers a suffix with a 400 that says so (tested on SmolLM2 itself)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import httpx
import openai
import pytest
from conftest import SMOL, module_home
from gguf.scripts.gguf_new_metadata import MetadataDetails
from gguf_retemplate import with_metadata
from test_server import Server

FIM_MODEL = "smol-fim"
# SmolLM2's control tokens 8-10 (<issue_start>, <issue_comment>, <issue_closed>) stand for
# the markers: what matters here is where they go, not what a 135M model writes after them
PRE, SUF, MID = 8, 9, 10
MARKUP = ("<issue_start>", "<issue_comment>", "<issue_closed>")
PREFIX = "def add(a, b):\n    "
SUFFIX = "\n\nprint(add(2, 3))\n"


@pytest.fixture(scope="module")
def home(tmp_path_factory, smol_path) -> Iterator[Path]:
    with module_home(tmp_path_factory, "fim") as home:
        new = {
            key: MetadataDetails(gguf.GGUFValueType.UINT32, tok)
            for key, tok in (
                (gguf.Keys.Tokenizer.FIM_PRE_ID, PRE),
                (gguf.Keys.Tokenizer.FIM_SUF_ID, SUF),
                (gguf.Keys.Tokenizer.FIM_MID_ID, MID),
            )
        }
        dst = with_metadata(smol_path, home.parent / f"{FIM_MODEL}.gguf", new)
        r = subprocess.run([sys.executable, "-m", "localsym", "pull", str(dst)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        yield home


@pytest.fixture(scope="module")
def fim(home) -> Iterator[Server]:
    s = Server(home, "--model", FIM_MODEL)
    yield s
    s.stop()


def vocab_tokens(text: str) -> list[int]:
    from localsym.runtime.bridge import Model
    from localsym.session import models

    v = Model(models.resolve(FIM_MODEL), vocab_only=True)
    try:
        return v.tokenize(text)
    finally:
        v.close()


def test_the_model_reports_its_markers(home):
    from localsym.runtime.bridge import Model
    from localsym.session import models

    m = Model(models.resolve(FIM_MODEL), vocab_only=True)
    plain = Model(models.resolve(SMOL), vocab_only=True)
    try:
        assert m.fim == (PRE, SUF, MID)
        assert [m.tokenize(t, parse_special=True) for t in MARKUP] == [[PRE], [SUF], [MID]]
        assert plain.fim is None
    finally:
        m.close()
        plain.close()


def test_suffix_goes_between_the_markers(fim, home):
    """The suffix request answers exactly as a raw prompt that spells the markers out (the
    same tokens, greedy), on both APIs; its prompt counts both texts and three markers."""
    n = len(vocab_tokens(PREFIX)) + len(vocab_tokens(SUFFIX)) + 3
    client = openai.OpenAI(base_url=f"{fim.url}/v1", api_key="unused", max_retries=0, timeout=120)
    r = client.completions.create(model=FIM_MODEL, prompt=PREFIX, suffix=SUFFIX, max_tokens=12, temperature=0)
    spelled = MARKUP[0] + PREFIX + MARKUP[1] + SUFFIX + MARKUP[2]
    same = client.completions.create(model=FIM_MODEL, prompt=spelled, max_tokens=12, temperature=0)
    assert r.model_extra["localsym"]["prompt_tokens"] == n
    assert r.choices[0].text == same.choices[0].text and r.choices[0].text

    body = {"model": FIM_MODEL, "prompt": PREFIX, "suffix": SUFFIX, "stream": False}
    g = httpx.post(
        f"{fim.url}/api/generate", json=body | {"options": {"temperature": 0, "num_predict": 12}}, timeout=120
    )
    assert g.status_code == 200, g.text
    assert g.json()["response"] == r.choices[0].text and g.json()["localsym"]["prompt_tokens"] == n

    # a gap at the start of a file: no prompt, only what comes after
    start = client.completions.create(model=FIM_MODEL, prompt="", suffix=SUFFIX, max_tokens=4, temperature=0)
    assert start.model_extra["localsym"]["prompt_tokens"] == len(vocab_tokens(SUFFIX)) + 3


def test_a_model_without_markers_says_so(fim, home):
    """SmolLM2 itself (no markers): a suffix is a 400 naming why, on both APIs; an empty
    suffix (the end of a file) is a plain completion; a suffix that is no string is a 400."""
    r = httpx.post(
        f"{fim.url}/v1/completions",
        json={"model": FIM_MODEL, "prompt": "x = ", "suffix": 3, "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 400 and "suffix must be a string" in r.json()["error"]["message"]
    plain = Server(home)
    answers: list[tuple[str, int]] = []
    try:
        client = openai.OpenAI(base_url=f"{plain.url}/v1", api_key="unused", max_retries=0, timeout=120)
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError, match="no fill-in-the-middle tokens"):
                client.completions.create(model=SMOL, prompt=PREFIX, suffix=SUFFIX, max_tokens=4, stream=stream)
        g = httpx.post(
            f"{plain.url}/api/generate",
            json={"model": SMOL, "prompt": PREFIX, "suffix": SUFFIX},  # Ollama streams by default
            timeout=60,
        )
        assert g.status_code == 400 and "no fill-in-the-middle tokens" in g.json()["error"]
        ok = client.completions.create(model=SMOL, prompt=PREFIX, suffix="", max_tokens=4, temperature=0)
        assert ok.choices[0].text
        # Ollama: an empty suffix is none, and the prompt goes through the chat template as usual
        for suffix in ("", None):
            body = {"model": SMOL, "prompt": "Hi", "stream": False, "options": {"temperature": 0, "num_predict": 4}}
            g = httpx.post(f"{plain.url}/api/generate", json=body | {"suffix": suffix}, timeout=60)
            assert g.status_code == 200, g.text
            answers.append((g.json()["response"], g.json()["localsym"]["prompt_tokens"]))
        assert answers[0] == answers[1]
    finally:
        plain.stop()
