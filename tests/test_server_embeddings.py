"""Embeddings (#27) through `localsym serve`, driven by the real `openai` and `ollama`
clients on SmolLM2: OpenAI's /v1/embeddings, Ollama's /api/embed and /api/embeddings."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import openai
import pytest
from conftest import module_home
from test_server import MODEL, SESSION, Server

EMBED_CTX = 256  # the server's embedding context here: a truncated input costs one small decode
CAT, CAT2, STOCKS = "The cat sat on the mat.", "A cat was sitting on the rug.", "Stock markets fell sharply on Tuesday."


@pytest.fixture(scope="module")
def server(tmp_path_factory, smol_path) -> Iterator[Server]:
    with module_home(tmp_path_factory, "embed", LOCALSYM_EMBED_CTX=str(EMBED_CTX)) as home:
        s = Server(home)
        yield s
        s.stop()


@pytest.fixture(scope="module")
def n_embd(smol_path) -> int:
    from localsym.runtime.gguf_file import read_header

    return int(read_header(smol_path).metadata["llama.embedding_length"])


@pytest.fixture(scope="module")
def tokenize(smol_path):
    from localsym.runtime.bridge import Model

    vocab = Model(smol_path, vocab_only=True)
    yield lambda text: vocab.tokenize(text, add_special=True)
    vocab.close()


def _maps_of(server: Server, smol_path) -> int:
    """How many mappings of the model file the server process holds (one per load)."""
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if not maps.exists():
        pytest.skip("needs /proc")
    return sum(1 for line in maps.read_text().splitlines() if line.endswith(smol_path.name))


def test_one_copy_of_the_weights(server, smol_path):
    """The embedding context runs on the weights the chat sessions use: opened beside an
    open session it borrows that model; a session opened beside it finds it (one mapping of
    the file throughout)."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={SESSION: "s1"}, timeout=120)
    assert r.status_code == 200
    loaded = _maps_of(server, smol_path)
    assert loaded >= 1
    server.oa().embeddings.create(model=MODEL, input=CAT)
    assert _maps_of(server, smol_path) == loaded
    assert httpx.delete(f"{server.url}/localsym/sessions/s1", timeout=60).status_code == 200
    assert _maps_of(server, smol_path) == loaded  # the embedding context still holds the model
    r = httpx.post(f"{server.url}/v1/chat/completions", json=chat, headers={SESSION: "s2"}, timeout=120)
    assert r.status_code == 200 and _maps_of(server, smol_path) == loaded
    r = httpx.post(f"{server.url}/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60)
    assert r.json()["done_reason"] == "unload" and _maps_of(server, smol_path) == 0  # all closed: freed
    assert httpx.get(f"{server.url}/api/ps").json()["models"] == []
    server.oa().embeddings.create(model=MODEL, input=CAT)
    assert [m["model"] for m in httpx.get(f"{server.url}/api/ps").json()["models"]] == [f"{MODEL}:latest"]


def _vectors(resp) -> np.ndarray:
    return np.array([d.embedding for d in sorted(resp.data, key=lambda d: d.index)], np.float64)


def test_openai_sdk(server, n_embd):
    """The SDK's default (base64) and "float": one unit vector per input, in order, of the
    model's width; the same text alone and in a batch alike; a paraphrase nearer than an
    unrelated sentence."""
    client = server.oa()
    r = client.embeddings.create(model=MODEL, input=[CAT, CAT2, STOCKS])  # the SDK asks for base64
    assert r.object == "list" and r.model == MODEL and [d.index for d in r.data] == [0, 1, 2]
    assert all(d.object == "embedding" for d in r.data)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 3
    v = _vectors(r)
    assert v.shape == (3, n_embd)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert np.abs(v[0] - v[2]).max() > 1e-2  # different texts, different vectors
    assert v[0] @ v[1] > v[0] @ v[2] + 0.05  # SmolLM2's mean pooling: ~0.95 against ~0.75

    floats = client.embeddings.create(model=MODEL, input=[CAT, CAT2, STOCKS], encoding_format="float")
    assert isinstance(floats.data[0].embedding, list)
    assert np.array_equal(_vectors(floats), v)  # base64 holds the same float32 values

    alone = _vectors(client.embeddings.create(model=MODEL, input=CAT2, encoding_format="float"))
    assert alone.shape == (1, n_embd) and np.abs(alone[0] - v[1]).max() < 1e-4

    same = client.embeddings.create(model=MODEL, input=CAT, dimensions=n_embd)
    assert np.abs(_vectors(same)[0] - v[0]).max() < 1e-4


def test_openai_base64_on_the_wire(server):
    body = {"model": MODEL, "input": [CAT, STOCKS]}
    f = httpx.post(f"{server.url}/v1/embeddings", json=body | {"encoding_format": "float"}, timeout=120).json()
    b = httpx.post(f"{server.url}/v1/embeddings", json=body | {"encoding_format": "base64"}, timeout=120).json()
    for fd, bd in zip(f["data"], b["data"], strict=True):
        raw = np.frombuffer(base64.b64decode(bd["embedding"]), "<f4")
        assert np.array_equal(raw, np.array(fd["embedding"], np.float32))


def test_openai_token_ids(server, tokenize):
    """Token ids (one list, or a list of lists) give the same vectors as the text."""
    client = server.oa()
    text = _vectors(client.embeddings.create(model=MODEL, input=[CAT, STOCKS], encoding_format="float"))
    ids = [tokenize(CAT), tokenize(STOCKS)]
    one = _vectors(client.embeddings.create(model=MODEL, input=ids[0], encoding_format="float"))
    both = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert both.usage.prompt_tokens == len(ids[0]) + len(ids[1])
    assert np.abs(one[0] - text[0]).max() < 1e-4
    assert np.abs(_vectors(both) - text).max() < 1e-4


def test_ollama_sdk(server, n_embd):
    """/api/embed: unit vectors (the same as OpenAI's); /api/embeddings: one raw vector."""
    client = ollama.Client(host=server.url, timeout=120)
    r = client.embed(model=MODEL, input=[CAT, STOCKS])
    e = np.array(r.embeddings, np.float64)
    assert e.shape == (2, n_embd) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert r.prompt_eval_count > 2 and r.total_duration > 0 and r.load_duration is not None
    oa = _vectors(server.oa().embeddings.create(model=MODEL, input=[CAT, STOCKS]))
    assert np.abs(e - oa).max() < 1e-4

    single = client.embed(model=MODEL, input=CAT)
    assert np.abs(np.array(single.embeddings[0]) - e[0]).max() < 1e-4

    legacy = np.array(client.embeddings(model=MODEL, prompt=CAT).embedding, np.float64)
    assert legacy.shape == (n_embd,) and abs(np.linalg.norm(legacy) - 1) > 0.1  # not normalized, as Ollama's
    assert np.abs(legacy / np.linalg.norm(legacy) - e[0]).max() < 1e-4

    assert client.embed(model=MODEL, input=[]).embeddings == []  # Ollama's way to load the model
    r2 = httpx.post(f"{server.url}/api/embeddings", json={"model": MODEL, "prompt": ""}, timeout=60)
    assert r2.status_code == 200 and r2.json() == {"embedding": []}


def test_too_long(server):
    """Past the embedding context: OpenAI and Ollama's truncate=false refuse (400);
    Ollama truncates by default."""
    long = " ".join(f"word{i}" for i in range(EMBED_CTX + 50))
    with pytest.raises(openai.BadRequestError) as e:
        server.oa().embeddings.create(model=MODEL, input=[CAT, long])
    assert "input[1]" in str(e.value) and f"({EMBED_CTX} tokens)" in str(e.value)
    client = ollama.Client(host=server.url, timeout=120)
    with pytest.raises(ollama.ResponseError) as oe:
        client.embed(model=MODEL, input=long, truncate=False)
    assert oe.value.status_code == 400 and "longer than the embedding context" in oe.value.error
    r = client.embed(model=MODEL, input=long)
    assert r.prompt_eval_count == EMBED_CTX and len(r.embeddings) == 1


def test_a_client_that_leaves_stops_the_work(server):
    """A client gone mid-request stops its decode: the next request is served at once, not
    after the minutes the first one's inputs would take."""
    long = " ".join(f"word{i}" for i in range(EMBED_CTX))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/api/embed", json={"model": MODEL, "input": [long] * 64}, timeout=1.5)
    t0 = time.monotonic()
    r = httpx.post(f"{server.url}/api/embed", json={"model": MODEL, "input": CAT}, timeout=120)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 1
    assert time.monotonic() - t0 < 20  # 64 x 256 tokens: over a minute at ~100 tokens/s


@pytest.mark.parametrize(
    "body, words",
    [
        ({"input": 12}, "input must be"),
        ({}, "input must be"),
        ({"input": []}, "must not be empty"),
        ({"input": [CAT, 7]}, "input must be"),
        ({"input": [[1, 2], CAT]}, "input must be"),
        ({"input": [True, False]}, "input must be"),
        ({"input": [""]}, "input[0] is empty"),
        ({"input": [[1], []]}, "input[1] is empty"),
        ({"input": [[1, 2, 10**9]]}, "outside the vocabulary"),
        ({"input": [-1]}, "outside the vocabulary"),
        ({"input": ["x"] * 2049}, "at most 2048"),
        ({"input": CAT, "encoding_format": "hex"}, "encoding_format"),
        ({"input": CAT, "dimensions": 64}, "dimensions must be"),
        ({"input": CAT, "dimensions": "64"}, "dimensions must be"),
    ],
)
def test_openai_bad_requests(server, body, words):
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL} | body, timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "path, body, words",
    [
        ("/api/embed", {"input": [1, 2]}, "input must be"),
        ("/api/embed", {"input": {"a": 1}}, "input must be"),
        ("/api/embed", {"input": CAT, "truncate": "yes"}, "truncate must be"),
        ("/api/embed", {"input": CAT, "options": "fast"}, "options must be"),
        ("/api/embed", {"input": CAT, "dimensions": 3}, "dimensions must be"),
        ("/api/embeddings", {"prompt": ["a"]}, "prompt must be"),
    ],
)
def test_ollama_bad_requests(server, path, body, words):
    r = httpx.post(f"{server.url}{path}", json={"model": MODEL} | body, timeout=60)
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]


def test_other_model_and_bad_json(server):
    r = httpx.post(f"{server.url}/v1/embeddings", json={"model": "gpt-4", "input": "hi"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(f"{server.url}/api/embed", json={"model": "llama3:8b", "input": "hi"}, timeout=30)
    assert r.status_code == 404 and "not found" in r.json()["error"]
    r = httpx.post(f"{server.url}/v1/embeddings", content=b"{not json", timeout=30)
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]


def test_embedder_on_a_sliding_window_model(gemma_path):
    """The bridge's embedding context on Gemma 3 (iSWA caches; 128-token pieces for its 262K
    vocabulary): the same properties as SmolLM2's through the server."""
    from localsym.runtime.bridge import Embedder, Model

    emb = Embedder(Model.shared(gemma_path), 1024, n_threads=2)
    try:
        tok = lambda s: emb.model.tokenize(s, add_special=True)  # noqa: E731
        v = emb.embed([tok(CAT), tok(CAT2), tok(STOCKS)])
        assert v.shape == (3, emb.n_embd) and np.isfinite(v).all()
        u = v / np.linalg.norm(v, axis=1, keepdims=True)
        assert u[0] @ u[1] > u[0] @ u[2] + 0.05
        assert np.abs(emb.embed([tok(CAT2)])[0] - v[1]).max() < 1e-4
    finally:
        emb.close()
