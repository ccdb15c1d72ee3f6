"""A tiny random-weight MoE GGUF (architecture qwen3moe) for exercising the routing path.

Random weights give random routing: it tests the mechanism (eval callback, traces, file
ranges, prefetch), not predictability. The tokenizer is copied from a real GGUF so that
llama.cpp loads and runs it like any model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from gguf import GGUFWriter

from localsym.runtime.gguf_file import read_header

TOKENIZER_KEYS = (
    "tokenizer.ggml.model",
    "tokenizer.ggml.pre",
    "tokenizer.ggml.tokens",
    "tokenizer.ggml.token_type",
    "tokenizer.ggml.merges",
    "tokenizer.ggml.bos_token_id",
    "tokenizer.ggml.eos_token_id",
)


def build(
    path: Path,
    tokenizer_from: Path,
    n_layer: int = 4,
    n_embd: int = 64,
    n_head: int = 4,
    n_head_kv: int = 2,
    n_expert: int = 8,
    n_used: int = 2,
    n_ff_exp: int = 32,
    seed: int = 0,
    dtype: type = np.float32,
) -> Path:
    meta = read_header(tokenizer_from, vocab=True).metadata
    tokens = meta["tokenizer.ggml.tokens"]
    n_vocab = len(tokens)
    hd = n_embd // n_head
    rng = np.random.default_rng(seed)
    w = GGUFWriter(str(path), "qwen3moe")
    w.add_block_count(n_layer)
    w.add_context_length(2048)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff_exp)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_expert_count(n_expert)
    w.add_expert_used_count(n_used)
    w.add_expert_feed_forward_length(n_ff_exp)
    w.add_tokenizer_model(meta["tokenizer.ggml.model"])
    w.add_tokenizer_pre(meta["tokenizer.ggml.pre"])
    w.add_token_list(tokens)
    w.add_token_types(meta["tokenizer.ggml.token_type"])
    w.add_token_merges(meta["tokenizer.ggml.merges"])
    w.add_bos_token_id(meta["tokenizer.ggml.bos_token_id"])
    w.add_eos_token_id(meta["tokenizer.ggml.eos_token_id"])

    def t(name: str, *shape: int, scale: float = 0.02) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * scale).astype(dtype if len(shape) > 1 else np.float32))

    t("token_embd.weight", n_vocab, n_embd)
    w.add_tensor("output_norm.weight", np.ones(n_embd, np.float32))
    t("output.weight", n_vocab, n_embd)
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, np.float32))
        t(p + "attn_q.weight", n_head * hd, n_embd)
        t(p + "attn_k.weight", n_head_kv * hd, n_embd)
        t(p + "attn_v.weight", n_head_kv * hd, n_embd)
        t(p + "attn_output.weight", n_embd, n_head * hd)
        w.add_tensor(p + "attn_q_norm.weight", np.ones(hd, np.float32))
        w.add_tensor(p + "attn_k_norm.weight", np.ones(hd, np.float32))
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, np.float32))
        t(p + "ffn_gate_inp.weight", n_expert, n_embd, scale=1.0)
        t(p + "ffn_gate_exps.weight", n_expert, n_ff_exp, n_embd)
        t(p + "ffn_up_exps.weight", n_expert, n_ff_exp, n_embd)
        t(p + "ffn_down_exps.weight", n_expert, n_embd, n_ff_exp)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
