"""A synthetic 7B-shaped GGUF (dense llama, random Q4_0 weights) for benchmarks.

The KV-memory layer's costs depend on the model's shape (layers, KV heads, head size), not on
what its weights know. A random model of a real 7B layout gives GPU/CPU figures at that size
without downloading 4 GB of weights: building one takes seconds plus the time to write the
file. The tokenizer (and chat template) is copied from a real GGUF so that llama.cpp loads,
tokenizes and runs it like any model. Its output is noise, so it measures speed and memory only.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES, LlamaFileType

from localsym.errors import BadModelFile
from localsym.runtime.gguf_file import check_complete, read_header

Shape = dict[str, int | float]

SHAPES: dict[str, Shape] = {
    # Qwen2-7B's layout in llama form: 28 layers, 28 query heads and 4 KV heads of 128.
    "7b": {
        "n_layer": 28,
        "n_embd": 3584,
        "n_head": 28,
        "n_head_kv": 4,
        "n_ff": 18944,
        "n_ctx_train": 32768,
        "rope_base": 1e6,
    },
    # Qwen2-1.5B's layout: half the 7B's KV per token (2 KV heads of 128), a fifth of its weights.
    "1.5b": {
        "n_layer": 28,
        "n_embd": 1536,
        "n_head": 12,
        "n_head_kv": 2,
        "n_ff": 8960,
        "n_ctx_train": 32768,
        "rope_base": 1e6,
    },
    # For tests: builds in well under a second (copying the tokenizer is most of it).
    "tiny": {
        "n_layer": 2,
        "n_embd": 256,
        "n_head": 4,
        "n_head_kv": 2,
        "n_ff": 512,
        "n_ctx_train": 4096,
        "rope_base": 1e4,
    },
}
SPEC_PREFIX = "synthetic:"
SHAPE_KEYS = ("n_layer", "n_embd", "n_head", "n_head_kv", "n_ff", "n_ctx_train", "rope_base", "seed")

# One f16 scale for every Q4_0 block: a weight is (code - 8) * SCALE, so its RMS is about
# 4.6 * SCALE and a row of n inputs of RMS 1 gives outputs of RMS ~4.6 * SCALE * sqrt(n)
# (about 1.1 for the 7B's 3584-wide rows, 2.5 for its 18944-wide FFN down rows). RMS norms
# before every matmul keep that from compounding over the layers.
SCALE = 0.004
Q4_0 = GGMLQuantizationType.Q4_0
BLOCK, BLOCK_BYTES = GGML_QUANT_SIZES[Q4_0]  # 32 weights in 18 bytes
# Random codes repeat with this period (in blocks): a prime, so that the repeats never line up
# with a row. Generating 16 MB of random bytes and tiling them is what makes a 7B build fast.
PERIOD = 1_048_573
_KEY = "localsym.synthetic."


def parse_spec(spec: str) -> Shape | None:
    """``synthetic:7b`` -> that shape (a copy); None for anything not starting ``synthetic:``."""
    if not spec.startswith(SPEC_PREFIX):
        return None
    name = spec[len(SPEC_PREFIX) :]
    if name not in SHAPES:
        raise ValueError(f"unknown synthetic shape {name!r} (known: {', '.join(SHAPES)})")
    return dict(SHAPES[name])


def _full_shape(shape: dict[str, Any]) -> Shape:
    unknown = set(shape) - set(SHAPE_KEYS)
    if unknown:
        raise TypeError(f"unknown shape parameter(s): {', '.join(sorted(unknown))}")
    return {**SHAPES["7b"], "seed": 0, **shape}


def _validate(s: Shape) -> None:
    n_embd, n_head, n_head_kv, n_ff = (int(s[k]) for k in ("n_embd", "n_head", "n_head_kv", "n_ff"))
    if min(int(s["n_layer"]), n_embd, n_head, n_head_kv, n_ff, int(s["n_ctx_train"])) <= 0:
        raise ValueError(f"every size must be positive: {s}")
    if n_embd % n_head:
        raise ValueError(f"n_embd {n_embd} is not a multiple of n_head {n_head}")
    if n_head % n_head_kv:
        raise ValueError(f"n_head {n_head} is not a multiple of n_head_kv {n_head_kv}")
    for name, n in (("n_embd", n_embd), ("n_ff", n_ff)):
        if n % BLOCK:
            raise ValueError(
                f"{name} {n} is not a multiple of {BLOCK}: every weight row is made of {BLOCK}-weight Q4_0 blocks"
            )


def _copy_tokenizer(w: GGUFWriter, meta: dict[str, Any]) -> int:
    """Copy every tokenizer.* key with the type llama.cpp expects; returns the vocabulary size."""
    lists: dict[str, Callable[[Any], None]] = {
        "tokenizer.ggml.tokens": w.add_token_list,
        "tokenizer.ggml.token_type": w.add_token_types,
        "tokenizer.ggml.scores": w.add_token_scores,
        "tokenizer.ggml.merges": w.add_token_merges,
    }
    for key, val in meta.items():
        if not key.startswith("tokenizer."):
            continue
        if key in lists:
            lists[key](val)
        elif isinstance(val, bool):
            w.add_bool(key, val)
        elif isinstance(val, int):
            w.add_uint32(key, val)  # token ids, the only integers tokenizers carry
        elif isinstance(val, float):
            w.add_float32(key, val)
        elif isinstance(val, str):
            w.add_string(key, val)
        elif isinstance(val, list):
            w.add_array(key, val)
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise BadModelFile("the tokenizer GGUF has no tokenizer.ggml.tokens")
    return len(tokens)


def _block_pool(n_blocks: int, rng: np.random.Generator) -> np.ndarray:
    """[n_blocks, 18] Q4_0 blocks: the fixed scale, then random codes repeating every PERIOD blocks."""
    period = min(n_blocks, PERIOD)
    codes = rng.integers(0, 256, (period, BLOCK_BYTES - 2), dtype=np.uint8)
    pool = np.empty((n_blocks, BLOCK_BYTES), np.uint8)
    pool[:, :2] = np.frombuffer(np.float16(SCALE).tobytes(), np.uint8)
    for start in range(0, n_blocks, period):
        n = min(period, n_blocks - start)
        pool[start : start + n, 2:] = codes[:n]
    return pool


def build(
    path: Path,
    tokenizer_from: Path,
    *,
    n_layer: int = 28,
    n_embd: int = 3584,
    n_head: int = 28,
    n_head_kv: int = 4,
    n_ff: int = 18944,
    n_ctx_train: int = 32768,
    rope_base: float = 1e6,
    seed: int = 0,
) -> Path:
    """Write a dense llama GGUF of random Q4_0 weights to ``path`` (via a temp file and a rename).

    Defaults: Qwen2-7B's layout (SHAPES["7b"]). The output head is tied to the token embedding.
    """
    shape: Shape = {
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "n_ff": n_ff,
        "n_ctx_train": n_ctx_train,
        "rope_base": rope_base,
        "seed": seed,
    }
    _validate(shape)
    path = Path(path)
    meta = read_header(tokenizer_from, vocab=True).metadata
    hd = n_embd // n_head
    rng = np.random.default_rng(seed)

    w = GGUFWriter(None, "llama")
    w.add_name(f"synthetic llama {n_layer}x{n_embd}")
    w.add_file_type(LlamaFileType.MOSTLY_Q4_0)
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_uint32(_KEY + "seed", seed)
    n_vocab = _copy_tokenizer(w, meta)
    w.add_vocab_size(n_vocab)

    # (name, rows, cols) in numpy order; cols == 0 marks a 1-D f32 norm of length rows.
    tensors: list[tuple[str, int, int]] = [("token_embd.weight", n_vocab, n_embd), ("output_norm.weight", n_embd, 0)]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [
            (p + "attn_norm.weight", n_embd, 0),
            (p + "attn_q.weight", n_head * hd, n_embd),
            (p + "attn_k.weight", n_head_kv * hd, n_embd),
            (p + "attn_v.weight", n_head_kv * hd, n_embd),
            (p + "attn_output.weight", n_embd, n_head * hd),
            (p + "ffn_norm.weight", n_embd, 0),
            (p + "ffn_gate.weight", n_ff, n_embd),
            (p + "ffn_up.weight", n_ff, n_embd),
            (p + "ffn_down.weight", n_embd, n_ff),
        ]
    for name, rows, cols in tensors:
        if cols:
            # uint8 data with a quantized raw_dtype: gguf reads the shape in BYTES per row.
            row_bytes = cols // BLOCK * BLOCK_BYTES
            w.add_tensor_info(name, (rows, row_bytes), np.dtype(np.uint8), rows * row_bytes, raw_dtype=Q4_0)
        else:
            w.add_tensor_info(name, (rows,), np.dtype(np.float32), rows * 4)

    biggest = max(rows * cols // BLOCK for _, rows, cols in tensors)
    pool = _block_pool(biggest + PERIOD, rng).reshape(-1)
    ones = np.ones(max(n_embd, 1), np.float32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        w.write_header_to_file(tmp)
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for _name, rows, cols in tensors:
            if cols:
                # A view of the pool at a random block offset: no copy, and tensors differ.
                start = int(rng.integers(0, PERIOD)) * BLOCK_BYTES
                w.write_tensor_data(pool[start : start + rows * cols // BLOCK * BLOCK_BYTES])
            else:
                w.write_tensor_data(ones[:rows])
        w.close()
        os.replace(tmp, path)
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    return path


def shape_of(path: Path) -> Shape | None:
    """The shape a synthetic GGUF was built with, from its header; None if it is not one (or is cut short)."""
    try:
        h = read_header(path)
        check_complete(h)
    except BadModelFile:
        return None
    m = h.metadata
    if m.get("general.architecture") != "llama" or _KEY + "seed" not in m:
        return None
    keys = {
        "n_layer": "block_count",
        "n_embd": "embedding_length",
        "n_head": "attention.head_count",
        "n_head_kv": "attention.head_count_kv",
        "n_ff": "feed_forward_length",
        "n_ctx_train": "context_length",
    }
    try:
        shape: Shape = {k: int(m[f"llama.{v}"]) for k, v in keys.items()}
        shape["rope_base"] = float(m["llama.rope.freq_base"])
        shape["seed"] = int(m[_KEY + "seed"])
    except (KeyError, TypeError, ValueError):
        return None
    return shape


def ensure(path: Path, tokenizer_from: Path, **shape: float) -> Path:
    """``path`` holding a synthetic model of ``shape`` (defaults: 7B): built only when the file
    is missing, incomplete, of another shape or of another vocabulary size."""
    want = _full_shape(shape)
    _validate(want)
    path = Path(path)
    have = shape_of(path)
    if have is not None and _same(have, want) and _n_vocab(path) == _n_vocab(tokenizer_from):
        return path
    return build(path, tokenizer_from, **want)  # type: ignore[arg-type]


def _same(a: Shape, b: Shape) -> bool:
    # rope_base is stored as f32: compare it at that precision.
    return all(a[k] == b[k] for k in SHAPE_KEYS if k != "rope_base") and np.float32(a["rope_base"]) == np.float32(
        b["rope_base"]
    )


def _n_vocab(path: Path) -> int:
    return int(read_header(path).metadata.get("tokenizer.ggml.tokens", 0))
