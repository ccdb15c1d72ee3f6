from pathlib import Path

import pytest

from localsym.errors import BadModelFile
from localsym.runtime.gguf_file import check_complete, read_header
from localsym.runtime.model_info import model_info


def test_reads_real_smollm2_header(smol_path):
    h = read_header(smol_path)
    assert h.version == 3
    assert h.metadata["general.architecture"] == "llama"
    assert h.metadata["tokenizer.ggml.tokens"] == 49152  # skipped array: its length only
    assert h.has_weights
    info = model_info(smol_path, h)
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv, info.head_dim_k) == (30, 576, 9, 3, 64)
    assert info.n_ctx_train == 8192
    assert info.file_type == "Q4_1"
    assert 130e6 < info.n_params < 140e6
    assert info.kv_bytes_per_token() == 30 * 3 * 64 * 2 * 2
    assert info.chat_template and "im_start" in info.chat_template
    assert not info.is_moe


def test_gemma_is_sliding_window(gemma_path):
    info = model_info(gemma_path)
    assert info.architecture == "gemma3"
    assert info.sliding_window == 512
    assert info.n_ctx_train == 32768
    assert info.chat_template is None


def test_truncated_file_is_detected(tmp_path, smol_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smol_path.read_bytes()[: 50_000_000])
    h = read_header(cut)  # the header is intact ...
    with pytest.raises(BadModelFile, match="truncated GGUF"):
        check_complete(h)  # ... the weights are not
    tiny = tmp_path / "tiny.gguf"
    tiny.write_bytes(smol_path.read_bytes()[:1000])
    with pytest.raises(BadModelFile, match="truncated GGUF header"):
        read_header(tiny)


def test_not_a_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("hello, this is not a model\n" * 10)
    with pytest.raises(BadModelFile, match="not a GGUF file"):
        read_header(p)
    with pytest.raises(BadModelFile, match="no such file"):
        read_header(tmp_path / "missing.gguf")
