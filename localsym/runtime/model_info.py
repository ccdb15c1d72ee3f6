"""What a GGUF is, in the terms a user and the fit plan need: shape, sizes, experts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from localsym.runtime.gguf_file import GGUFHeader, read_header

# llama.cpp's LLAMA_FTYPE names for general.file_type.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}

_LAYER = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    name: str
    architecture: str
    n_params: int
    file_type: str
    file_size: int
    n_ctx_train: int
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    n_vocab: int
    n_expert: int
    n_expert_used: int
    sliding_window: int
    chat_template: str | None
    weights_bytes: int
    layer_bytes: tuple[int, ...]  # every tensor of layer i
    expert_bytes: tuple[int, ...]  # the *_exps tensors of layer i (0 for dense layers)
    other_bytes: int  # embeddings, output head, final norm

    @property
    def is_moe(self) -> bool:
        return self.n_expert > 0

    def kv_bytes_per_token(self, k_bytes: float = 2.0, v_bytes: float = 2.0) -> int:
        """KV cache bytes per token for all layers at the given bytes per element."""
        per_layer = self.n_head_kv * (self.head_dim_k * k_bytes + self.head_dim_v * v_bytes)
        return int(self.n_layer * per_layer)


def _get(meta: dict, arch: str, key: str, default=0):
    return meta.get(f"{arch}.{key}", default)


def model_info(path: str | Path, header: GGUFHeader | None = None) -> ModelInfo:
    h = header or read_header(path)
    m = h.metadata
    arch = str(m.get("general.architecture", "unknown"))
    n_layer = int(_get(m, arch, "block_count"))
    n_embd = int(_get(m, arch, "embedding_length"))
    n_head = _get(m, arch, "attention.head_count", 0)
    n_head_kv = _get(m, arch, "attention.head_count_kv", n_head)
    # Per-layer head counts appear as arrays in some models (OpenELM, Jamba): use the max.
    n_head = int(max(n_head) if isinstance(n_head, list) else n_head)
    n_head_kv = int(max(n_head_kv) if isinstance(n_head_kv, list) else n_head_kv)
    head_dim = n_embd // n_head if n_head else 0
    hk = int(_get(m, arch, "attention.key_length", head_dim))
    hv = int(_get(m, arch, "attention.value_length", head_dim))
    layer_bytes = [0] * n_layer
    expert_bytes = [0] * n_layer
    other = 0
    for t in h.tensors:
        match = _LAYER.match(t.name)
        if match and int(match.group(1)) < n_layer:
            i = int(match.group(1))
            layer_bytes[i] += t.nbytes
            if "_exps" in t.name:
                expert_bytes[i] += t.nbytes
        else:
            other += t.nbytes
    tokens = m.get("tokenizer.ggml.tokens")
    n_vocab = int(_get(m, arch, "vocab_size", 0) or (tokens if tokens is not None else 0) or 0)
    if isinstance(tokens, list):
        n_vocab = n_vocab or len(tokens)
    ft = m.get("general.file_type")
    return ModelInfo(
        path=Path(h.path),
        name=str(m.get("general.name", Path(h.path).stem)),
        architecture=arch,
        n_params=sum(t.n_elements for t in h.tensors),
        file_type=FILE_TYPES.get(int(ft), f"type {ft}") if ft is not None else "unknown",
        file_size=h.file_size,
        n_ctx_train=int(_get(m, arch, "context_length", 0)),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=hk,
        head_dim_v=hv,
        n_vocab=n_vocab,
        n_expert=int(_get(m, arch, "expert_count", 0)),
        n_expert_used=int(_get(m, arch, "expert_used_count", 0)),
        sliding_window=int(_get(m, arch, "attention.sliding_window", 0)),
        chat_template=m.get("tokenizer.chat_template"),
        weights_bytes=sum(t.nbytes for t in h.tensors),
        layer_bytes=tuple(layer_bytes),
        expert_bytes=tuple(expert_bytes),
        other_bytes=other,
    )
