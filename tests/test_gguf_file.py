import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

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
    cut.write_bytes(smol_path.read_bytes()[:50_000_000])
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


# -- crafted headers: every malformation is a BadModelFile in one line ---------------------------------
U32, I32, F32, BOOL, STR, ARR, U64 = 4, 5, 6, 7, 8, 9, 10
F32_T, Q4_0_T = 0, 2  # ggml types


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(b)) + b


def _val(vtype: int, v) -> bytes:
    if vtype == STR:
        return _s(v)
    if vtype == ARR:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(_val(etype, x) for x in items)
    return struct.pack({U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q"}[vtype], v)


def _kv(key: str, vtype: int, v) -> bytes:
    return _s(key) + struct.pack("<I", vtype) + _val(vtype, v)


BASE_KV = {
    "general.architecture": (STR, "llama"),
    "llama.block_count": (U32, 2),
    "llama.embedding_length": (U32, 64),
    "llama.attention.head_count": (U32, 4),
    "llama.context_length": (U32, 128),
}
BASE_TENSORS = [("token_embd.weight", (64, 10), F32_T), ("blk.0.attn_q.weight", (64, 64), F32_T)]


def craft(
    path: Path,
    kv: dict | None = None,
    tensors: list | None = None,
    *,
    magic: bytes = b"GGUF",
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
    raw_kv: bytes = b"",
    offsets: list[int] | None = None,
    data: bool = True,
) -> Path:
    """A GGUF written byte by byte: BASE_KV updated by ``kv`` (a None value drops the key), the
    tensors packed at 32-byte alignment (or at ``offsets``), then zeros for their data."""
    kv = {**BASE_KV, **(kv or {})}
    kv = {k: v for k, v in kv.items() if v is not None}
    tensors = BASE_TENSORS if tensors is None else tensors
    body = b"".join(_kv(k, t, v) for k, (t, v) in kv.items()) + raw_kv
    nkv = len(kv) if n_kv is None else n_kv
    off, table, sizes = 0, b"", []
    for i, (name, shape, ggml_type) in enumerate(tensors):
        nbytes = 4 * int(np.prod(shape)) if ggml_type == F32_T else int(np.prod(shape)) // 32 * 18
        at = offsets[i] if offsets else off
        table += _s(name) + struct.pack("<I", len(shape)) + b"".join(struct.pack("<Q", d) for d in shape)
        table += struct.pack("<IQ", ggml_type, at)
        off = at + (nbytes + 31) // 32 * 32
        sizes.append(nbytes)
    head = magic + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors, nkv)
    out = head + body + table
    out += b"\0" * (-len(out) % 32)
    if data:
        out += b"\0" * off
    path.write_bytes(out)
    return path


def bad(path: Path, match: str, info: bool = False) -> str:
    """Reading ``path`` (and deriving its shape, with ``info``) fails with one line naming the file."""
    with pytest.raises(BadModelFile, match=match) as e:
        h = read_header(path)
        check_complete(h)
        if info:
            model_info(path, h)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"{path}: "), msg
    return msg


def test_crafted_base_file_is_valid(tmp_path):
    p = craft(tmp_path / "ok.gguf")
    h = read_header(p)
    check_complete(h)
    info = model_info(p, h)
    assert (info.n_layer, info.n_embd, info.n_head, info.n_head_kv, info.head_dim_k, info.n_ctx_train) == (
        2,
        64,
        4,
        4,
        16,
        128,
    )
    assert info.layer_bytes == (64 * 64 * 4, 0) and info.other_bytes == 64 * 10 * 4


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"magic": b"GGML"}, "not a GGUF file"),
        ({"version": 1}, "unsupported GGUF version 1"),
        ({"version": 3 << 24}, "big-endian GGUF"),
        ({"n_tensors": 1 << 40}, "absurd counts"),
        ({"n_kv": 1 << 40}, "absurd counts"),
        ({"n_kv": 5000}, r"truncated GGUF header \(2 tensors and 5000 keys need"),
        ({"tensors": []}, "no tensors"),
        ({"raw_kv": _s("x") + struct.pack("<I", 13), "n_kv": 6}, "unknown value type 13"),
        ({"raw_kv": _s("x") + struct.pack("<IIQ", ARR, 99, 0), "n_kv": 6}, "array of unknown value type 99"),
        ({"raw_kv": _s("x") + struct.pack("<IIQ", ARR, U32, 1 << 61), "n_kv": 6}, "more than the whole file"),
        (
            {"raw_kv": _s("x") + struct.pack("<IIQ", ARR, U32, 60), "n_kv": 6, "data": False},
            r"truncated GGUF header \(key 'x': an array of 60 needs 240 bytes at offset \d+, \d+ left\)",
        ),
        (
            {"raw_kv": struct.pack("<Q", 1 << 62), "n_kv": 6},
            "a string needs 4611686018427387904 bytes, more than the whole file",
        ),
        (
            {"raw_kv": _s("x") + struct.pack("<I", ARR) + struct.pack("<IQ", ARR, 1) * 5000, "n_kv": 6},
            "arrays nested more than 2 deep",
        ),
        (
            {"kv": {"llama.block_count": (U32, 3)}, "raw_kv": _kv("llama.block_count", U32, 2), "n_kv": 6},
            "duplicate key 'llama.block_count'",
        ),
        ({"kv": {"general.alignment": (U32, 0)}}, "general.alignment is 0, not a power of two"),
        ({"kv": {"general.alignment": (U32, 48)}}, "general.alignment is 48"),
        ({"kv": {"general.alignment": (STR, "32")}}, "general.alignment is '32'"),
        ({"tensors": [("t", (1, 1, 1, 1, 1), F32_T)]}, "5 dimensions"),
        ({"tensors": [("t", (1 << 40, 1 << 40), F32_T)]}, r"shape \[1099511627776, 1099511627776\]"),
        ({"tensors": [("t", (64,), 99)]}, "unknown tensor type 99"),
        ({"tensors": [("t", (33, 2), Q4_0_T)]}, "row of 33 not a multiple of its type's block of 32"),
        ({"tensors": [("t", (8,), F32_T), ("t", (8,), F32_T)]}, "duplicate tensor 't'"),
        ({"tensors": [("x" * 64, (8,), F32_T)]}, "name longer than 63 bytes"),
        ({"offsets": [0, 4096]}, r"data at offset 4096, expected 2560"),
        ({"data": False}, r"truncated GGUF \(\d+ of \d+ bytes present\)"),
    ],
)
def test_malformed_headers(tmp_path, kw, match):
    bad(craft(tmp_path / "bad.gguf", **kw), match)


def test_truncated_anywhere(tmp_path):
    whole = craft(tmp_path / "ok.gguf").read_bytes()
    header_end = whole.index(b"blk.0.attn_q.weight") + 60
    cut = tmp_path / "cut.gguf"
    for n in range(header_end):
        cut.write_bytes(whole[:n])
        bad(cut, "not a GGUF file" if n < 24 else "truncated GGUF")


@pytest.mark.parametrize(
    "kv, match",
    [
        ({"general.architecture": None}, "general.architecture missing"),
        ({"general.architecture": (U32, 7)}, "general.architecture is int, not a string"),
        ({"llama.block_count": None}, "llama.block_count missing"),
        ({"llama.block_count": (U32, 0)}, r"llama.block_count = 0 is out of range \(1..100000\)"),
        ({"llama.block_count": (U64, 1 << 40)}, "llama.block_count = 1099511627776 is out of range"),
        ({"llama.block_count": (STR, "32")}, "llama.block_count is a string, not an integer"),
        ({"llama.block_count": (F32, 2.0)}, "llama.block_count is a float, not an integer"),
        ({"llama.block_count": (BOOL, True)}, "llama.block_count is a bool, not an integer"),
        ({"llama.embedding_length": (U32, 0)}, "llama.embedding_length = 0 is out of range"),
        ({"llama.embedding_length": (ARR, (U32, [64]))}, "llama.embedding_length is an array"),
        ({"llama.attention.head_count": None}, "llama.attention.head_count missing"),
        ({"llama.attention.head_count": (I32, -4)}, "llama.attention.head_count = -4 is out of range"),
        ({"llama.attention.head_count": (ARR, (STR, ["4"]))}, "head_count holds a value that is not an integer"),
        ({"llama.attention.head_count": (U32, 128)}, r"head size 0 \(128 heads in an embedding of 64\)"),
        ({"llama.attention.head_count_kv": (U32, 8)}, "8 KV heads but 4 query heads"),
        ({"llama.attention.key_length": (U32, 1 << 20)}, "llama.attention.key_length = 1048576 is out of range"),
        ({"llama.context_length": None}, "llama.context_length missing"),
        ({"llama.context_length": (U32, 0)}, "llama.context_length = 0 is out of range"),
        (
            {"llama.expert_count": (U32, 4), "llama.expert_used_count": (U32, 8)},
            "expert_used_count = 8 is out of range",
        ),
        ({"general.file_type": (STR, "Q4_K_M")}, "general.file_type is a string"),
        ({"tokenizer.chat_template": (U32, 1)}, "tokenizer.chat_template is int, not a string"),
        ({"tokenizer.ggml.tokens": (STR, "abc")}, "tokenizer.ggml.tokens is a string, not an array"),
    ],
)
def test_malformed_shape_keys(tmp_path, kv, match):
    bad(craft(tmp_path / "bad.gguf", kv), match, info=True)


def test_per_layer_head_counts_still_read(tmp_path):
    p = craft(
        tmp_path / "ok.gguf",
        {"llama.attention.head_count": (ARR, (I32, [4, 2])), "llama.attention.head_count_kv": (ARR, (I32, [2, 0]))},
    )
    info = model_info(p)
    assert (info.n_head, info.n_head_kv) == (4, 2)


@pytest.mark.parametrize("kv", [{"llama.block_count": (U64, 1 << 40)}, {"general.alignment": (U32, 0)}])
def test_cli_show_of_a_bad_file_is_one_line(home, tmp_path, kv):
    p = craft(tmp_path / "bad.gguf", kv)
    r = run_cli("show", str(p), home=home, timeout=120)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("localsym: error: ") and str(p) in lines[0], r.stderr
