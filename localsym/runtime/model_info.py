"""What a GGUF is, in the terms a user and the fit plan need: shape, sizes, experts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsym.errors import BadModelFile
from localsym.runtime.gguf_file import ArrayLen, GGUFHeader, check_complete, read_header

# llama.cpp's LLAMA_FTYPE names for general.file_type.
FILE_TYPES = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4",
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


_MISSING = object()
# Bounds far beyond any real model: past them a header is corrupt or hostile (a block_count of
# 2^40 would otherwise allocate per-layer tables of that length).
MAX_LAYERS = 100_000
MAX_EMBD = 1 << 20
MAX_HEADS = 1 << 16
MAX_HEAD_DIM = 1 << 16
MAX_CTX = 1 << 32
MAX_EXPERTS = 1 << 16


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a bool"
    if isinstance(v, ArrayLen | list):
        return "an array"
    return {str: "a string", float: "a float"}.get(type(v), type(v).__name__)


def _int(h: GGUFHeader, key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
    """An integer key in [lo, hi]; a missing required key, another type or a value out of
    range is a malformed file, said in one line."""
    v = h.metadata.get(key, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise BadModelFile(f"{h.path}: {key} missing from the GGUF header")
        return default
    if type(v) is not int:
        raise BadModelFile(f"{h.path}: {key} is {_kind(v)}, not an integer")
    if not lo <= v <= hi:
        raise BadModelFile(f"{h.path}: {key} = {v} is out of range ({lo}..{hi})")
    return v


def _per_layer(h: GGUFHeader, key: str, lo: int, hi: int, default: Any = _MISSING) -> int:
    """A count that some models (OpenELM, Jamba) give per layer as an array: its max."""
    v = h.metadata.get(key, _MISSING)
    if isinstance(v, list):
        if not v or any(type(x) is not int or not lo <= x <= hi for x in v):
            raise BadModelFile(f"{h.path}: {key} holds a value that is not an integer in {lo}..{hi}")
        return max(v)
    return _int(h, key, lo, hi, default)


def _str(h: GGUFHeader, key: str, default: Any = _MISSING) -> Any:
    v = h.metadata.get(key, _MISSING)
    if v is _MISSING:
        if default is _MISSING:
            raise BadModelFile(f"{h.path}: {key} missing from the GGUF header")
        return default
    if not isinstance(v, str):
        raise BadModelFile(f"{h.path}: {key} is {_kind(v)}, not a string")
    return v


def split_parts(h: GGUFHeader) -> list[GGUFHeader]:
    """Every part of a split GGUF (``NAME-00001-of-0000N.gguf``) given its first part's header,
    so sizes and the fit plan count the whole model (llama.cpp loads the other parts itself);
    a missing or damaged part is a one-line BadModelFile."""
    count = h.metadata.get("split.count")
    if not isinstance(count, int) or count <= 1:
        return [h]
    m = re.match(r"^(.*)-00001-of-(\d{5})\.gguf$", Path(h.path).name)
    if not m or int(m.group(2)) != count:
        raise BadModelFile(f"{h.path}: split into {count} parts, but not named as the first of them")
    parts = [h]
    for i in range(2, count + 1):
        part = Path(h.path).with_name(f"{m.group(1)}-{i:05d}-of-{count:05d}.gguf")
        if not part.exists():
            raise BadModelFile(f"{h.path}: part {i} of {count} is missing ({part.name})")
        ph = read_header(part)
        check_complete(ph)
        parts.append(ph)
    return parts


def model_info(path: str | Path, header: GGUFHeader | None = None) -> ModelInfo:
    """The shape of a model from its header; BadModelFile (one line) when the header cannot
    describe a model: a required key missing, of the wrong type or absurd."""
    h = header or read_header(path)
    m = h.metadata
    arch = _str(h, "general.architecture")
    n_layer = _int(h, f"{arch}.block_count", 1, MAX_LAYERS)
    n_embd = _int(h, f"{arch}.embedding_length", 1, MAX_EMBD)
    n_ctx_train = _int(h, f"{arch}.context_length", 1, MAX_CTX)
    # 0 heads is an attention-free layer stack (Mamba); per-layer arrays: the max.
    n_head = _per_layer(h, f"{arch}.attention.head_count", 0, MAX_HEADS)
    n_head_kv = _per_layer(h, f"{arch}.attention.head_count_kv", 0, MAX_HEADS, n_head)
    if n_head_kv > n_head:
        raise BadModelFile(f"{h.path}: {n_head_kv} KV heads but {n_head} query heads")
    head_dim = n_embd // n_head if n_head else 0
    hk = _int(h, f"{arch}.attention.key_length", 1, MAX_HEAD_DIM, head_dim)
    hv = _int(h, f"{arch}.attention.value_length", 1, MAX_HEAD_DIM, head_dim)
    if n_head and not (hk and hv):
        raise BadModelFile(f"{h.path}: head size 0 ({n_head} heads in an embedding of {n_embd})")
    n_expert = _int(h, f"{arch}.expert_count", 0, MAX_EXPERTS, 0)
    n_expert_used = _int(h, f"{arch}.expert_used_count", 0, n_expert, 0)
    sliding_window = _int(h, f"{arch}.attention.sliding_window", 0, MAX_CTX, 0)
    layer_bytes = [0] * n_layer
    expert_bytes = [0] * n_layer
    other = 0
    parts = split_parts(h)
    tensors = [t for part in parts for t in part.tensors]
    for t in tensors:
        match = _LAYER.match(t.name)
        if match and int(match.group(1)) < n_layer:
            i = int(match.group(1))
            layer_bytes[i] += t.nbytes
            if "_exps" in t.name:
                expert_bytes[i] += t.nbytes
        else:
            other += t.nbytes
    tokens = m.get("tokenizer.ggml.tokens")
    if tokens is not None and not isinstance(tokens, list) and type(tokens) is not ArrayLen:
        raise BadModelFile(f"{h.path}: tokenizer.ggml.tokens is {_kind(tokens)}, not an array")
    n_tokens = len(tokens) if isinstance(tokens, list) else int(tokens or 0)
    n_vocab = _int(h, f"{arch}.vocab_size", 0, 1 << 31, 0) or n_tokens
    ft = _int(h, "general.file_type", 0, 1 << 16, None)
    return ModelInfo(
        path=Path(h.path),
        name=_str(h, "general.name", Path(h.path).stem),
        architecture=arch,
        n_params=sum(t.n_elements for t in tensors),
        file_type=FILE_TYPES.get(ft, f"type {ft}") if ft is not None else "unknown",
        file_size=sum(part.file_size for part in parts),
        n_ctx_train=n_ctx_train,
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim_k=hk,
        head_dim_v=hv,
        n_vocab=n_vocab,
        n_expert=n_expert,
        n_expert_used=n_expert_used,
        sliding_window=sliding_window,
        chat_template=_str(h, "tokenizer.chat_template", None),
        weights_bytes=sum(t.nbytes for t in h.tensors),
        layer_bytes=tuple(layer_bytes),
        expert_bytes=tuple(expert_bytes),
        other_bytes=other,
    )
