"""The synthetic benchmark model: right shape in the header, loads and runs in llama.cpp, rebuilt only on change."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from localsym.bench.synthetic_model import SHAPES, build, ensure, parse_spec, shape_of
from localsym.runtime.gguf_file import read_header
from localsym.runtime.model_info import model_info

SMALL = {"n_layer": 2, "n_embd": 256, "n_head": 4, "n_head_kv": 2, "n_ff": 512, "n_ctx_train": 4096}


def test_builds_a_llama_that_runs(tmp_path: Path, smol_path: Path) -> None:
    from localsym.runtime.engine import Engine, RunOptions

    path = build(tmp_path / "syn.gguf", smol_path, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["syn.gguf"]  # no temp file left behind
    info = model_info(path)
    assert info.architecture == "llama"
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv) == (2, 256, 4, 2)
    assert info.n_ctx_train == 4096 and info.file_type == "Q4_0"
    assert info.kv_bytes_per_token() == 2 * 2 * (64 * 2 + 64 * 2)
    h = read_header(path, vocab=True)
    src = read_header(smol_path, vocab=True).metadata
    assert h.tensor("blk.1.ffn_down.weight").shape == (512, 256)  # ggml order: row length first
    assert GGMLQuantizationType(h.tensor("blk.0.attn_q.weight").ggml_type).name == "Q4_0"
    assert h.tensor("output.weight") is None  # tied to token_embd
    for key in (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.chat_template",
    ):
        assert h.metadata.get(key) == src.get(key), key

    with Engine(path, RunOptions(n_ctx=256, vram="cpu")) as eng:
        toks = eng.tokenize_prompt("def add(a, b):\n    return a + b\n")
        assert len(toks) > 4
        eng.ctx.decode(toks, 0, 0)
        first = eng.ctx.logits()
        assert first.shape == (info.n_vocab,) and np.isfinite(first).all()
        assert first.std() > 0  # not a dead network
        eng.ctx.decode(toks[:3], len(toks), 0)
        assert np.isfinite(eng.ctx.logits()).all()


def test_ensure_builds_only_on_change(tmp_path: Path, smol_path: Path) -> None:
    path = tmp_path / "syn.gguf"
    ensure(path, smol_path, **SMALL)
    assert shape_of(path) == {**SMALL, "rope_base": 1e6, "seed": 0}
    past = 1_000_000_000
    os.utime(path, (past, past))
    ensure(path, smol_path, **SMALL)
    assert path.stat().st_mtime == past  # same shape: kept
    ensure(path, smol_path, **{**SMALL, "n_head_kv": 1})
    assert path.stat().st_mtime != past  # another shape: rebuilt
    assert model_info(path).n_head_kv == 1
    os.utime(path, (past, past))
    ensure(path, smol_path, **{**SMALL, "n_head_kv": 1, "seed": 3})
    assert path.stat().st_mtime != past and shape_of(path)["seed"] == 3
    # A file cut short (not something build leaves, but a copy might) is rebuilt.
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.truncate(size - 100)
    ensure(path, smol_path, **{**SMALL, "n_head_kv": 1, "seed": 3})
    assert path.stat().st_size == size


def test_shapes_are_checked(tmp_path: Path, smol_path: Path) -> None:
    with pytest.raises(ValueError, match="n_ff 500 is not a multiple of 32"):
        build(tmp_path / "x.gguf", smol_path, **{**SMALL, "n_ff": 500})
    with pytest.raises(ValueError, match="n_embd 80 is not a multiple of 32"):
        build(tmp_path / "x.gguf", smol_path, **{**SMALL, "n_embd": 80, "n_head": 4})
    with pytest.raises(ValueError, match="n_head 4 is not a multiple of n_head_kv 3"):
        ensure(tmp_path / "x.gguf", smol_path, **{**SMALL, "n_head_kv": 3})
    with pytest.raises(TypeError, match="n_layers"):
        ensure(tmp_path / "x.gguf", smol_path, n_layers=2)
    assert not list(tmp_path.iterdir())


def test_specs() -> None:
    assert parse_spec("synthetic:7b") == SHAPES["7b"]
    assert parse_spec("smollm2-135m") is None
    with pytest.raises(ValueError, match="known: 7b"):
        parse_spec("synthetic:70b")
    s7 = SHAPES["7b"]
    # 28 layers x 4 KV heads x 128 x (K + V) x f16: 14.7 MB per 256-token block
    assert s7["n_layer"] * s7["n_head_kv"] * (s7["n_embd"] // s7["n_head"]) * 2 * 2 * 256 == 14_680_064
