"""Metadata-only GGUFs of big model shapes, for fit-plan tests on a machine without them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as T


def _info(w: GGUFWriter, name: str, shape: tuple[int, ...], qtype: T) -> None:
    block, size = GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    nbytes = n // block * size
    # gguf wants numpy (row-major) order; ggml order is reversed.
    np_shape = tuple(reversed(shape))
    if qtype in (T.F32, T.F16):
        w.add_tensor_info(name, np_shape, np.float32 if qtype == T.F32 else np.float16, nbytes)
    else:
        bshape = (*np_shape[:-1], np_shape[-1] // block * size)
        w.add_tensor_info(name, bshape, np.uint8, nbytes, raw_dtype=qtype)


def write_shape(
    path: Path,
    arch: str,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_head_kv: int,
    n_ff: int,
    n_vocab: int,
    n_ctx: int,
    n_expert: int = 0,
    n_expert_used: int = 0,
    n_ff_exp: int = 0,
    head_dim: int | None = None,
) -> Path:
    w = GGUFWriter(str(path), arch)
    hd = head_dim or n_embd // n_head
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_vocab_size(n_vocab)
    w.add_file_type(15)
    if n_expert:
        w.add_expert_count(n_expert)
        w.add_expert_used_count(n_expert_used)
        w.add_expert_feed_forward_length(n_ff_exp)
    q = T.Q4_K
    _info(w, "token_embd.weight", (n_embd, n_vocab), q)
    _info(w, "output_norm.weight", (n_embd,), T.F32)
    _info(w, "output.weight", (n_embd, n_vocab), T.Q6_K)
    for i in range(n_layer):
        p = f"blk.{i}."
        _info(w, p + "attn_norm.weight", (n_embd,), T.F32)
        _info(w, p + "attn_q.weight", (n_embd, n_head * hd), q)
        _info(w, p + "attn_k.weight", (n_embd, n_head_kv * hd), q)
        _info(w, p + "attn_v.weight", (n_embd, n_head_kv * hd), T.Q6_K)
        _info(w, p + "attn_output.weight", (n_head * hd, n_embd), q)
        _info(w, p + "ffn_norm.weight", (n_embd,), T.F32)
        if n_expert:
            _info(w, p + "ffn_gate_inp.weight", (n_embd, n_expert), T.F32)
            _info(w, p + "ffn_gate_exps.weight", (n_embd, n_ff_exp, n_expert), q)
            _info(w, p + "ffn_up_exps.weight", (n_embd, n_ff_exp, n_expert), q)
            _info(w, p + "ffn_down_exps.weight", (n_ff_exp, n_embd, n_expert), T.Q6_K)
        else:
            _info(w, p + "ffn_gate.weight", (n_embd, n_ff), q)
            _info(w, p + "ffn_up.weight", (n_embd, n_ff), q)
            _info(w, p + "ffn_down.weight", (n_ff, n_embd), T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def llama_7b(path: Path) -> Path:
    """Llama-2-7B's shape at Q4_K_M (no GQA: a big KV cache)."""
    return write_shape(path, "llama", 32, 4096, 32, 32, 11008, 32000, 4096)


def qwen3_30b_a3b(path: Path) -> Path:
    """Qwen3-30B-A3B's shape at Q4_K_M: 48 layers, 128 experts, 8 used."""
    return write_shape(
        path,
        "qwen3moe",
        48,
        2048,
        32,
        4,
        6144,
        151936,
        40960,
        n_expert=128,
        n_expert_used=8,
        n_ff_exp=768,
        head_dim=128,
    )
