"""The one bridge to llama.cpp. Every ctypes call of localsym lives in this module.

Contexts are made by hand (``llama_context_default_params`` + ``llama_init_from_model``)
because ``llama_cpp.Llama`` cannot set ``n_seq_max``, ``kv_unified`` or an eval callback,
which the tiered memory and the expert observer need. Callers above this module see
Python ints, bytes and numpy arrays only.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as lc
import numpy as np

from localsym.errors import BadModelFile, BudgetError, LocalsymError
from localsym.runtime.limits import MIN_CTX, check_threads, context_sizes

log = logging.getLogger("localsym.llama")

CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q4_1": 3, "q5_0": 6, "q5_1": 7, "q8_0": 8, "iq4_nl": 20, "bf16": 30}
STATE_SEQ_FLAGS_SWA_ONLY = 1
GGML_LOG_LEVEL_DEBUG, GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR, GGML_LOG_LEVEL_CONT = 1, 3, 4, 5  # ggml.h
_init_lock = threading.Lock()
_initialised = False
_recent = threading.local()  # llama.cpp logs on the calling thread: each thread its own errors


def _recent_errors() -> list[str]:
    if not hasattr(_recent, "errors"):
        _recent.errors = []
    return _recent.errors


@lc.llama_log_callback
def _log_callback(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # llama.cpp is chatty on stderr; route it to logging and keep recent errors for messages.
    msg = text.decode("utf-8", errors="replace").rstrip()
    if level == GGML_LOG_LEVEL_ERROR:
        errors = _recent_errors()
        errors.append(msg)
        del errors[:-20]
    if level == GGML_LOG_LEVEL_CONT:  # continues the previous line (load-progress dots)
        level = getattr(_recent, "level", GGML_LOG_LEVEL_DEBUG)
    else:
        _recent.level = level
    if not msg:
        return
    log.log(logging.WARNING if level in (GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR) else logging.DEBUG, msg)


def _ensure_backend() -> None:
    global _initialised
    with _init_lock:
        if not _initialised:
            lc.llama_log_set(_log_callback, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _initialised = True


def _last_error(default: str) -> str:
    errors = _recent_errors()
    return errors[-1] if errors else default


_live: weakref.WeakSet[Context] = weakref.WeakSet()  # every open context, for cancel_all


def cancel_all() -> None:
    """Ask every running decode to stop at its next graph split (Ctrl+C: a Python signal
    handler must not raise inside llama.cpp's abort callback)."""
    for ctx in list(_live):
        ctx.cancel()


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def shared_models() -> list[tuple[ModelKey, int]]:
    """The shared models loaded now, each with how many holders use it."""
    with _shared_lock:
        return [(k, m._users) for k, m in _shared.items() if m._ptr is not None]


def gpu_offload_supported() -> bool:
    _ensure_backend()
    return bool(lc.llama_supports_gpu_offload())


@dataclass(frozen=True)
class ModelKey:
    """What makes two loads the same weights: the file (resolved, and its identity: device,
    inode, size, mtime, so a replaced or rewritten file is a new model) and the placement
    (GPU layers, the layers whose experts stay in RAM, vocab-only, mmap)."""

    path: str
    dev: int
    ino: int
    size: int
    mtime_ns: int
    n_gpu_layers: int
    cpu_moe_layers: tuple[int, ...]
    vocab_only: bool
    use_mmap: bool

    @property
    def file(self) -> tuple[str, int, int, int, int]:
        """Which file, as it is now (path, device, inode, size, mtime): the same weights."""
        return (self.path, self.dev, self.ino, self.size, self.mtime_ns)

    @classmethod
    def of(
        cls,
        path: str | Path,
        n_gpu_layers: int = 0,
        vocab_only: bool = False,
        use_mmap: bool = True,
        n_cpu_moe: int | Sequence[int] = 0,
    ) -> ModelKey:
        real = Path(path).resolve()
        st = real.stat()
        layers: tuple[int, ...] = ()
        if n_cpu_moe and n_gpu_layers:  # without GPU layers the overrides are not applied
            layers = tuple(range(n_cpu_moe)) if isinstance(n_cpu_moe, int) else tuple(sorted(set(n_cpu_moe)))
        return cls(
            str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, n_gpu_layers, layers, vocab_only, use_mmap
        )


_shared_lock = threading.Lock()
_shared: dict[ModelKey, Model] = {}  # loaded models in use, by what they are; each counts its users


class Model:
    """Loaded weights and vocabulary. Contexts borrow it; close it after them.

    ``Model(path)`` is a private load, freed by ``close()``. ``Model.shared(path, ...)`` is
    the process-wide copy for that file and placement: every caller gets the same object
    (one ``llama_model``, one copy of the weights), each ``close()`` gives one use back and
    the last frees it. llama.cpp runs several contexts on one model, from several threads:
    a loaded model is read-only (weights, vocab, metadata); logits, KV cache, batches and
    samplers belong to each context or caller.
    """

    def __init__(
        self,
        path: str | Path,
        n_gpu_layers: int = 0,
        vocab_only: bool = False,
        use_mmap: bool = True,
        n_cpu_moe: int | Sequence[int] = 0,
    ) -> None:
        _ensure_backend()
        self.path = Path(path)
        params = lc.llama_model_default_params()
        params.n_gpu_layers = n_gpu_layers
        params.vocab_only = vocab_only
        params.use_mmap = use_mmap
        self._overrides = _cpu_moe_overrides(n_cpu_moe) if n_cpu_moe and n_gpu_layers else None
        if self._overrides is not None:
            params.tensor_buft_overrides = ctypes.cast(self._overrides[0], ctypes.c_void_p)
        _recent_errors().clear()
        ptr = lc.llama_model_load_from_file(str(self.path).encode(), params)
        if not ptr:
            raise BadModelFile(f"{self.path}: llama.cpp could not load it ({_last_error('unknown reason')})")
        self._ptr = ptr
        self._vocab = lc.llama_model_get_vocab(ptr)
        self.n_vocab = lc.llama_vocab_n_tokens(self._vocab)
        self.vocab_only = vocab_only
        # A vocab-only load has no per-layer hparams: asking for them aborts the process.
        self.n_ctx_train = 0 if vocab_only else lc.llama_model_n_ctx_train(ptr)
        self.n_layer = 0 if vocab_only else lc.llama_model_n_layer(ptr)
        self.n_embd = 0 if vocab_only else lc.llama_model_n_embd(ptr)
        self.n_head = 0 if vocab_only else lc.llama_model_n_head(ptr)
        self.n_head_kv = 0 if vocab_only else lc.llama_model_n_head_kv(ptr)
        self.n_swa = 0 if vocab_only else lc.llama_model_n_swa(ptr)
        self.bos = lc.llama_vocab_bos(self._vocab)
        self.eos = lc.llama_vocab_eos(self._vocab)
        self.add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))
        # fill-in-the-middle markers (-1 where the model has none): code models name them in
        # their GGUF, or llama.cpp finds them by their text (<|fim_prefix|>, <PRE>, ...)
        fim = (
            lc.llama_vocab_fim_pre(self._vocab),
            lc.llama_vocab_fim_suf(self._vocab),
            lc.llama_vocab_fim_mid(self._vocab),
        )
        self.fim: tuple[int, int, int] | None = fim if min(fim) >= 0 else None
        # shared between threads: a dict read/write is atomic under the GIL, and a race
        # only computes the same piece twice
        self._piece_cache: dict[int, bytes] = {}
        self._key: ModelKey | None = None  # set when shared
        self._users = 1

    @classmethod
    def shared(
        cls,
        path: str | Path,
        n_gpu_layers: int = 0,
        vocab_only: bool = False,
        use_mmap: bool = True,
        n_cpu_moe: int | Sequence[int] = 0,
    ) -> Model:
        """The process's copy of this model with this placement, loaded on first use; the
        caller owns one use of it (``close()`` gives it back)."""
        key = ModelKey.of(path, n_gpu_layers, vocab_only, use_mmap, n_cpu_moe)
        with _shared_lock:  # held while loading: two sessions opening at once load it once
            m = _shared.get(key)
            if m is not None and m._ptr is not None:
                m._users += 1
                return m
            m = cls(key.path, n_gpu_layers, vocab_only, use_mmap, n_cpu_moe)
            m._key = key
            _shared[key] = m
            return m

    @classmethod
    def loaded(cls, path: str | Path) -> Model | None:
        """The process's shared copy of this file, whatever its placement, if one is loaded
        now (a new use of it: ``close()`` gives it back); None otherwise. A second context on
        the weights already in memory (the embedding context beside the chat sessions)
        needs no placement of its own."""
        f = ModelKey.of(path).file
        with _shared_lock:
            for k, m in _shared.items():
                if k.file == f and not k.vocab_only and m._ptr is not None:
                    m._users += 1
                    return m
        return None

    @property
    def users(self) -> int:
        """How many holders share this loaded model (1 for a private one; 0 once freed)."""
        return self._users if self._ptr is not None else 0

    @property
    def address(self) -> int:
        """The ``llama_model`` pointer as an int (to tell copies apart)."""
        return ctypes.cast(self.ptr, ctypes.c_void_p).value or 0

    @property
    def ptr(self):
        if self._ptr is None:
            raise LocalsymError("model is closed")
        return self._ptr

    @property
    def vocab(self):
        """The vocab's pointer; it lives inside the model, so it dies with it (a tokenize
        after close would read freed memory: a segfault, not an error)."""
        if self._ptr is None:
            raise LocalsymError("model is closed")
        return self._vocab

    def close(self) -> None:
        """Give back one use; the last one frees the model (its contexts must be closed)."""
        key = getattr(self, "_key", None)
        if key is not None:
            with _shared_lock:
                if self._ptr is None:
                    return
                self._users -= 1
                if self._users > 0:
                    return
                if _shared.get(key) is self:
                    del _shared[key]
                self._free()
            return
        self._free()

    def _free(self) -> None:
        if getattr(self, "_ptr", None):
            lc.llama_model_free(self._ptr)
            self._ptr = None
            self._users = 0

    def __del__(self) -> None:
        self._free()  # unreachable: nobody holds it, whatever the count says

    def description(self) -> str:
        buf = ctypes.create_string_buffer(256)
        lc.llama_model_desc(self.ptr, buf, 256)
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        t = lc.llama_model_chat_template(self.ptr, None)
        return t.decode("utf-8", errors="replace") if t else None

    @property
    def head_dim(self) -> int:
        arch = self.meta("general.architecture") or ""
        k = self.meta(f"{arch}.attention.key_length")
        return int(k) if k else self.n_embd // max(self.n_head, 1)

    @property
    def rope(self) -> tuple[str, int, float] | None:
        """(kind, rotated dims, frequency base) of a plain RoPE model ("norm" or "neox"),
        None for others (no RoPE, M-RoPE, or per-layer bases such as Gemma 3's SWA layers)."""
        if self.vocab_only or self.n_swa:
            return None
        kind = {0: "norm", 2: "neox"}.get(lc.llama_model_rope_type(self._ptr))
        if kind is None:
            return None
        arch = self.meta("general.architecture") or ""
        base = self.meta(f"{arch}.rope.freq_base")
        dims = self.meta(f"{arch}.rope.dimension_count")
        head = self.head_dim
        if self.meta(f"{arch}.rope.scaling.type") not in (None, "none"):
            return None  # YaRN / linear scaling change the angles: not modelled
        return kind, int(dims) if dims else head, float(base) if base else 10000.0

    def meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(4096)
        n = lc.llama_model_meta_val_str(self.ptr, key.encode(), buf, 4096)
        return buf.value.decode("utf-8", errors="replace") if n >= 0 else None

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = False) -> list[int]:
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            cap = -n
            buf = (lc.llama_token * cap)()
            n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        key = token if not special else -1 - token
        cached = self._piece_cache.get(key)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = lc.llama_token_to_piece(self.vocab, token, buf, 64, 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = lc.llama_token_to_piece(self.vocab, token, buf, -n, 0, special)
        out = buf.raw[:n]
        self._piece_cache[key] = out
        return out

    def detokenize(self, tokens: Sequence[int], special: bool = False) -> str:
        return b"".join(self.piece(t, special) for t in tokens).decode("utf-8", errors="replace")

    def is_eog(self, token: int) -> bool:
        return bool(lc.llama_vocab_is_eog(self.vocab, token))


class _BuftOverride(ctypes.Structure):
    # struct llama_model_tensor_buft_override { const char * pattern; ggml_backend_buffer_type_t buft; }
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _cpu_moe_overrides(n_cpu_moe: int | Sequence[int]):
    """llama.cpp's --n-cpu-moe: the expert tensors of the first N layers (or of the listed
    layers) in CPU buffers."""
    lib_dir = Path(lc.__file__).parent / "lib"
    cands = sorted(lib_dir.glob("libggml-cpu*.so*")) + sorted(lib_dir.glob("libggml-cpu*.dylib"))
    if not cands:
        raise LocalsymError(f"libggml-cpu not found in {lib_dir}")
    cpu = ctypes.CDLL(str(cands[0]))
    cpu.ggml_backend_cpu_buffer_type.restype = ctypes.c_void_p
    buft = cpu.ggml_backend_cpu_buffer_type()
    layers = range(n_cpu_moe) if isinstance(n_cpu_moe, int) else n_cpu_moe
    patterns = [f"blk\\.{i}\\.ffn_(up|down|gate)_exps".encode() for i in layers]
    arr = (_BuftOverride * (len(patterns) + 1))()
    for i, pat in enumerate(patterns):
        arr[i].pattern = pat
        arr[i].buft = buft
    arr[len(patterns)].pattern = None
    arr[len(patterns)].buft = None
    return arr, patterns  # keep the pattern bytes alive with the array


@dataclass
class TensorEvent:
    """A tensor the eval callback was shown: name, ggml shape/strides and a reader."""

    name: str
    op: int
    type: int
    ne: tuple[int, int, int, int]
    nb: tuple[int, int, int, int]
    _ptr: int

    def read(self) -> bytes:
        n = _ggml().ggml_nbytes(self._ptr)
        buf = ctypes.create_string_buffer(n)
        _ggml().ggml_backend_tensor_get(self._ptr, buf, 0, n)
        return buf.raw

    def read_int32_rows(self) -> np.ndarray:
        """A 2-D int32 tensor (possibly a view) as [ne1, ne0], honouring nb[1]."""
        raw = np.frombuffer(self.read(), dtype=np.uint8)
        rows = [raw[r * self.nb[1] : r * self.nb[1] + 4 * self.ne[0]].view(np.int32) for r in range(self.ne[1])]
        return np.stack(rows) if rows else np.zeros((0, self.ne[0]), np.int32)

    def read_f32(self) -> np.ndarray:
        """A contiguous f32 tensor as [ne3, ne2, ne1, ne0]."""
        arr = np.frombuffer(self.read(), dtype=np.float32)
        return arr.reshape(self.ne[3], self.ne[2], self.ne[1], self.ne[0])


class _GGMLTensor(ctypes.Structure):
    # struct ggml_tensor of ggml.h in the pinned llama.cpp (GGML_MAX_SRC 10, GGML_MAX_NAME 64)
    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_ggml_lib = None


def _ggml():
    """libggml-base from llama_cpp's lib folder, for the tensor functions it does not bind."""
    global _ggml_lib
    if _ggml_lib is None:
        lib_dir = Path(lc.__file__).parent / "lib"
        cands = sorted(lib_dir.glob("libggml-base.so*")) + sorted(lib_dir.glob("libggml-base*.dylib"))
        if not cands:
            raise LocalsymError(f"libggml-base not found in {lib_dir}")
        lib = ctypes.CDLL(str(cands[0]))
        lib.ggml_get_name.argtypes = [ctypes.c_void_p]
        lib.ggml_get_name.restype = ctypes.c_char_p
        lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
        lib.ggml_nbytes.restype = ctypes.c_size_t
        lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
        lib.ggml_backend_tensor_get.restype = None
        _ggml_lib = lib
    return _ggml_lib


_TENSOR_NE, _TENSOR_NB = _GGMLTensor.ne.offset, _GGMLTensor.nb.offset
_TENSOR_NAME, _TENSOR_BYTES = _GGMLTensor.name.offset, _GGMLTensor.name.offset + 64
_TOPK_PREFIX = np.frombuffer(b"ffn_moe_topk-", np.uint8).copy()
_tap_cb = None


def _routing_callback():
    """The compiled eval callback of ``RoutingTap`` (built once per process).

    A Python callback costs ~2 us per graph node (hundreds per token) and a Python copy per
    layer ~150 us: together ~10% of a small MoE's decode. Compiled, only the graph splits
    that reading a layer's routing needs remain."""
    global _tap_cb
    if _tap_cb is None:
        from numba import carray, cfunc, types

        addr = ctypes.cast(_ggml().ggml_backend_tensor_get, ctypes.c_void_p).value
        assert addr is not None  # a loaded symbol's address
        get = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_size_t)(addr)
        prefix = _TOPK_PREFIX
        npre = len(prefix)

        @cfunc(types.boolean(types.voidptr, types.boolean, types.voidptr))
        def cb(t, ask, user):
            # user: int64 [buf address, capacity rows, n_layer, n_used, rows per layer...]
            raw = carray(t, _TENSOR_BYTES, np.uint8)
            for i in range(npre):
                if raw[_TENSOR_NAME + i] != prefix[i]:
                    return False
            layer = 0
            i = _TENSOR_NAME + npre
            while raw[i] >= 48 and raw[i] <= 57:
                layer = layer * 10 + (raw[i] - 48)
                i += 1
            if ask:
                return True
            hdr = carray(user, 4, np.int64)
            n_layer, n_used, cap = hdr[2], hdr[3], hdr[1]
            if layer >= n_layer:
                return True
            rows = carray(user, 4 + n_layer, np.int64)
            ne = carray(t, 12, np.int64)  # ne at int64 #2..5, nb at #6..9
            ne0, ne1, nb1 = ne[_TENSOR_NE // 8], ne[_TENSOR_NE // 8 + 1], ne[_TENSOR_NB // 8 + 1]
            width = min(ne0, n_used)
            for r in range(ne1):
                at = rows[4 + layer]
                if at >= cap:
                    break
                get(t, hdr[0] + ((layer * cap + at) * n_used) * 4, r * nb1, width * 4)
                rows[4 + layer] = at + 1
            return True

        _tap_cb = cb
    return _tap_cb


class RoutingTap:
    """Every layer's ``ffn_moe_topk`` rows, copied from inside llama.cpp's eval callback by
    compiled code into a numpy buffer, and handed after each ``llama_decode`` to
    ``on_decode(per_layer)``: per layer, the [tokens, n_used] rows of that call (a model's
    last layer may keep only its output rows)."""

    def __init__(self, n_layer: int, n_used: int, on_decode: Callable[[list[np.ndarray]], None]) -> None:
        self.n_layer, self.n_used, self.on_decode = n_layer, n_used, on_decode
        self.c_callback = lc.ggml_backend_sched_eval_callback(_routing_callback().address)
        self.capacity = 0
        self.reserve(1)

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` tokens per layer: a context reserves its batch size."""
        if self.capacity >= rows:
            return
        self.capacity = rows
        self.buf = np.full((self.n_layer, rows, self.n_used), -1, np.int32)
        self.hdr = np.zeros(4 + self.n_layer, np.int64)
        self.hdr[:4] = (self.buf.ctypes.data, rows, self.n_layer, self.n_used)
        self.user_data = ctypes.c_void_p(self.hdr.ctypes.data)

    def flush(self, ok: bool = True) -> None:
        counts = self.hdr[4:].copy()
        self.hdr[4:] = 0
        if ok and counts.any():
            self.on_decode([self.buf[layer, : counts[layer]].copy() for layer in range(self.n_layer)])


# (name) -> whether to observe; (event) -> None
EvalObserver = tuple[Callable[[str], bool], Callable[[TensorEvent], None]]


class Context:
    """A llama.cpp context with explicit positions, sequences and KV state access."""

    def __init__(
        self,
        model: Model,
        n_ctx: int,
        n_batch: int = 512,
        n_ubatch: int = 512,
        n_seq_max: int = 1,
        kv_unified: bool | None = None,
        type_k: str = "f16",
        type_v: str = "f16",
        flash_attn: bool = True,
        n_threads: int | None = None,
        swa_full: bool = True,
        observer: EvalObserver | RoutingTap | None = None,
        embeddings: bool = False,
    ) -> None:
        """``embeddings``: the context outputs every token's last hidden state (after the
        output norm: what llama.cpp pools) instead of logits; see ``Embedder``."""
        for name in (type_k, type_v):
            if name not in CACHE_TYPES:
                raise LocalsymError(f"unknown cache type {name!r}: one of {', '.join(CACHE_TYPES)}")
        if type_v not in ("f16", "f32", "bf16") and not flash_attn:
            raise LocalsymError("a quantized V cache needs flash attention (-fa on)")
        self.model = model
        # sizes llama.cpp would abort on are raised or refused here (runtime/limits.py)
        sizes = context_sizes(n_ctx or model.n_ctx_train or MIN_CTX, n_batch, n_ubatch, n_seq_max)
        n_ctx, n_batch, n_seq_max = sizes.n_ctx, sizes.n_batch, sizes.n_seq_max
        p = lc.llama_context_default_params()
        p.n_ctx = n_ctx
        p.n_batch = n_batch
        p.n_ubatch = sizes.n_ubatch
        p.n_seq_max = n_seq_max
        p.kv_unified = n_seq_max > 1 if kv_unified is None else kv_unified
        threads = check_threads(n_threads) or default_threads()
        p.n_threads = threads
        p.n_threads_batch = threads
        p.type_k = CACHE_TYPES[type_k]
        p.type_v = CACHE_TYPES[type_v]
        p.flash_attn_type = 1 if flash_attn else 0
        p.swa_full = swa_full
        p.no_perf = True
        if embeddings:
            # one row per token, pooled by Embedder: llama.cpp's own pooling needs each
            # sequence whole in one ubatch, and a ubatch computes the output layer's logits
            # for every row (n_vocab floats each: ~780 MB for 2048 SmolLM2 tokens)
            p.embeddings = True
            p.pooling_type = lc.LLAMA_POOLING_TYPE_NONE
        self._cancel = threading.Event()
        # a context shared by several sessions (runtime/context_pool.py) also stops on the
        # cancel of the session whose decode is running
        self.abort_also: Callable[[], bool] | None = None
        self._abort_cb = lc.ggml_abort_callback(lambda _data: self._cancel.is_set() or self._abort_also())
        p.abort_callback = self._abort_cb
        self._eval_cb = None
        self._tap = observer if isinstance(observer, RoutingTap) else None
        if isinstance(observer, RoutingTap):
            observer.reserve(n_batch)
            self._eval_cb = observer.c_callback
            p.cb_eval = self._eval_cb
            p.cb_eval_user_data = observer.user_data
        elif observer is not None:
            want, handle = observer

            get_name = _ggml().ggml_get_name
            cache: dict[bytes, bool] = {}

            def _cb(t_ptr, ask, _user) -> bool:
                # called for every graph node of every decode: keep the ask path minimal
                raw = get_name(t_ptr) or b""
                if ask:
                    hit = cache.get(raw)
                    if hit is None:
                        hit = cache[raw] = bool(want(raw.decode()))
                    return hit
                t = _GGMLTensor.from_address(t_ptr)
                handle(TensorEvent(raw.decode(), t.op, t.type, tuple(t.ne), tuple(t.nb), t_ptr))
                return True

            self._eval_cb = lc.ggml_backend_sched_eval_callback(_cb)
            p.cb_eval = self._eval_cb
        _recent_errors().clear()
        ptr = lc.llama_init_from_model(model.ptr, p)
        if not ptr:
            raise BudgetError(f"llama.cpp could not create a {n_ctx}-token context ({_last_error('out of memory?')})")
        self._ptr = ptr
        self._mem = lc.llama_get_memory(ptr)
        self.n_ctx = lc.llama_n_ctx(ptr)
        self.n_batch = n_batch
        self.n_ubatch = sizes.n_ubatch
        self.n_seq_max = n_seq_max
        self.type_k, self.type_v, self.flash_attn = type_k, type_v, flash_attn
        self.n_threads = threads
        self._batch = lc.llama_batch_init(n_batch, 0, n_seq_max)
        self._n_vocab = model.n_vocab
        self.embeddings_out = embeddings
        self._n_outputs = 0  # logits rows the last llama_decode kept (its batch's flags)
        _live.add(self)

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ptr)
            self._ptr = None

    def __del__(self) -> None:
        self.close()

    # -- cancel -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Ask a running decode (from another thread) to stop at the next graph split."""
        self._cancel.set()

    def clear_cancel(self) -> None:
        self._cancel.clear()

    def _abort_also(self) -> bool:
        also = self.abort_also
        return also is not None and also()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    # -- decode -------------------------------------------------------------------------
    def decode(
        self,
        tokens: Sequence[int],
        positions: Sequence[int] | int,
        seq_ids: Sequence[int] | int = 0,
        logits: str | Sequence[bool] = "last",
    ) -> None:
        """Decode tokens at explicit positions; ``positions`` int = start of a run.

        ``logits``: "last" (the final token only), "all", "none" or one flag per token.
        Long inputs are split into n_batch pieces. Raises Cancelled when cancel() was called.
        """
        n = len(tokens)
        if n == 0:
            return
        pos = list(range(positions, positions + n)) if isinstance(positions, int) else list(positions)
        if len(pos) != n:
            raise ValueError("positions and tokens differ in length")
        if isinstance(logits, str):
            flags = [logits == "all"] * n
            if logits == "last":
                flags[-1] = True
        else:
            flags = list(logits)
        b = self._batch
        for start in range(0, n, self.n_batch):
            end = min(n, start + self.n_batch)
            for j, i in enumerate(range(start, end)):
                b.token[j] = tokens[i]
                b.pos[j] = pos[i]
                sids = seq_ids if isinstance(seq_ids, int) else seq_ids[i]
                if isinstance(sids, int):
                    b.n_seq_id[j] = 1
                    b.seq_id[j][0] = sids
                else:
                    b.n_seq_id[j] = len(sids)
                    for k, s in enumerate(sids):
                        b.seq_id[j][k] = s
                b.logits[j] = flags[i]
            b.n_tokens = end - start
            self._n_outputs = 0
            rc = lc.llama_decode(self._ptr, b)
            if self._tap is not None:
                self._tap.flush(ok=rc == 0)
            if rc == 2 or (rc != 0 and (self._cancel.is_set() or self._abort_also())):
                raise Cancelled()
            if rc == 1:
                raise BudgetError("the hot context is full: no KV cell is free for the batch")
            if rc != 0:
                raise LocalsymError(f"llama_decode failed ({rc}): {_last_error('see the log')}")
            self._n_outputs = sum(flags[start:end])

    def generating(self) -> contextlib.AbstractContextManager[None]:
        """Around a decode loop (a shared context batches the loops running at once)."""
        return contextlib.nullcontext()

    def hold(self) -> contextlib.AbstractContextManager[object]:
        """Around calls that must find the context as they left it (a context shared by
        sessions keeps the caller's room meanwhile: runtime/context_pool.py)."""
        return contextlib.nullcontext()

    def decode_sample(self, tokens: Sequence[int], positions: Sequence[int] | int, seq: int, sampler: Sampler) -> int:
        """Decode ``tokens`` (logits for the last) and sample the next token from them: one
        step, so that a shared context's other users cannot decode in between."""
        self.decode(tokens, positions, seq)
        return sampler.sample(self)

    def logits(self, i: int = -1) -> np.ndarray:
        """Logits of the i-th output of the last decode (a copy)."""
        ptr = lc.llama_get_logits_ith(self._ptr, i)
        if not ptr:
            raise LocalsymError("no logits for that output")
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).copy()

    def logits_all(self, n: int) -> np.ndarray:
        """The logits of the last decode's ``n`` outputs, [n, vocab] (a copy). Only the last
        ``n_batch`` piece's outputs are kept: decode longer runs piece by piece."""
        if n > self._n_outputs:  # reading past llama.cpp's buffer would crash the process
            raise LocalsymError(f"the last decode kept logits for {self._n_outputs} tokens, not {n}")
        ptr = lc.llama_get_logits(self._ptr)
        if not ptr:
            raise LocalsymError("no logits")
        return np.ctypeslib.as_array(ptr, shape=(n * self._n_vocab,)).reshape(n, self._n_vocab).copy()

    def embeddings(self, n: int) -> np.ndarray:
        """The hidden states of the last decode's ``n`` outputs, [n, n_embd] float32 (a copy);
        an ``embeddings=True`` context only."""
        if not self.embeddings_out:
            raise LocalsymError("this context does not output embeddings")
        if n > self._n_outputs:  # reading past llama.cpp's buffer would crash the process
            raise LocalsymError(f"the last decode kept embeddings for {self._n_outputs} tokens, not {n}")
        ptr = lc.llama_get_embeddings(self._ptr)
        if not ptr:
            raise LocalsymError("no embeddings")
        d = self.model.n_embd
        return np.ctypeslib.as_array(ptr, shape=(n * d,)).reshape(n, d).copy()

    # -- memory (KV cache) --------------------------------------------------------------
    def clear(self) -> None:
        lc.llama_memory_clear(self._mem, True)

    def seq_rm(self, seq: int, p0: int = -1, p1: int = -1) -> bool:
        return bool(lc.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_cp(self, src: int, dst: int, p0: int = -1, p1: int = -1) -> None:
        lc.llama_memory_seq_cp(self._mem, src, dst, p0, p1)

    def seq_add(self, seq: int, p0: int, p1: int, delta: int) -> None:
        lc.llama_memory_seq_add(self._mem, seq, p0, p1, delta)

    def seq_pos_min(self, seq: int) -> int:
        return lc.llama_memory_seq_pos_min(self._mem, seq)

    def seq_pos_max(self, seq: int) -> int:
        return lc.llama_memory_seq_pos_max(self._mem, seq)

    # -- sequence state blobs -------------------------------------------------------------
    def state_seq_get(self, seq: int, flags: int = 0) -> bytearray:
        """A sequence's KV state blob, copied out of llama.cpp once (into the returned buffer)."""
        size = lc.llama_state_seq_get_size_ext(self._ptr, seq, flags)
        buf = bytearray(size)
        n = lc.llama_state_seq_get_data_ext(self._ptr, (ctypes.c_uint8 * size).from_buffer(buf), size, seq, flags)
        if n != size:
            del buf[n:]
        return buf

    def state_seq_set(self, seq: int, blob: bytes | bytearray | np.ndarray, flags: int = 0) -> int:
        """Replace sequence ``seq`` with a saved blob; raise on a blob that does not fit.
        A writable buffer (what ``EncodedBlock.to_blob`` builds) is handed over without a copy."""
        n_bytes = blob.nbytes if isinstance(blob, np.ndarray) else len(blob)
        if isinstance(blob, bytearray | np.ndarray):
            buf = (ctypes.c_uint8 * n_bytes).from_buffer(blob.data if isinstance(blob, np.ndarray) else blob)
        else:
            buf = (ctypes.c_uint8 * n_bytes).from_buffer_copy(blob)
        n = lc.llama_state_seq_set_data_ext(self._ptr, buf, n_bytes, seq, flags)
        del buf
        if n == 0:
            raise LocalsymError(f"llama.cpp refused a KV state blob ({_last_error('shape or type mismatch')})")
        return n


class Cancelled(Exception):
    """A decode or generation stopped because cancel() was called."""


class Embedder:
    """Sentence embeddings: the mean over a text's tokens of the model's last hidden state
    (after the output norm), computed in a context of its own on ``model``, whose use it
    takes over (``close()``, or a failed construction, gives it back). Nothing it does
    touches another context.

    Each text is decoded on its own, in the same ``n_batch`` pieces whatever else a request
    holds: CPU kernels are not batch-size invariant (SmolLM2's Q4_1 matmuls take another
    path past 64 rows a ubatch: a text packed with others moved by ~5e-3 after
    normalization), and the same text must give the same vector alone or in a batch. Rows
    are pooled here, so a text may span several decode calls and the ubatch stays small
    (see ``Context``'s ``embeddings``). A text is at most ``n_ctx`` tokens. One caller at a
    time; ``cancel()`` may come from another thread."""

    SCRATCH_BYTES = 128 << 20  # a ubatch computes n_vocab logits per row: bound that buffer

    def __init__(
        self,
        model: Model,
        n_ctx: int,
        n_threads: int | None = None,
        flash_attn: bool = True,
    ) -> None:
        self.model = model
        n_ctx = min(n_ctx, model.n_ctx_train) if model.n_ctx_train else n_ctx
        n_batch = max(64, min(512, self.SCRATCH_BYTES // (4 * max(model.n_vocab, 1))))
        try:
            self.ctx = Context(
                model,
                n_ctx,
                n_batch=n_batch,
                n_ubatch=n_batch,
                flash_attn=flash_attn,
                n_threads=n_threads,
                embeddings=True,
            )
        except BaseException:
            model.close()  # the use it was given goes back with the failure
            raise
        self.n_ctx = self.ctx.n_ctx  # what the cache holds (llama.cpp pads to 256 cells)
        self.n_embd = model.n_embd
        self.n_vocab = model.n_vocab

    def check(self, tokens: Sequence[int], what: str = "input") -> None:
        """Raise LocalsymError for a text this context cannot embed (empty, too long, or an
        id outside the vocabulary: llama.cpp would read past its tables)."""
        if not tokens:
            raise LocalsymError(f"{what} is empty")
        if len(tokens) > self.n_ctx:
            raise LocalsymError(f"{what} is {len(tokens)} tokens: at most {self.n_ctx} fit the embedding context")
        lo, hi = min(tokens), max(tokens)
        if lo < 0 or hi >= self.n_vocab:
            bad = lo if lo < 0 else hi
            raise LocalsymError(f"{what}: token id {bad} is outside the vocabulary (0 to {self.n_vocab - 1})")

    def embed(self, texts: Sequence[Sequence[int]]) -> np.ndarray:
        """One mean-pooled vector per token list, [len(texts), n_embd] float32 (not
        normalized). Raises Cancelled when cancel() was called meanwhile."""
        for i, t in enumerate(texts):
            self.check(t, f"input[{i}]")
        out = np.zeros((len(texts), self.n_embd), np.float32)
        self.ctx.clear_cancel()
        step = self.ctx.n_batch
        try:
            for i, text in enumerate(texts):
                self.ctx.clear()
                total = np.zeros(self.n_embd, np.float64)
                for s in range(0, len(text), step):
                    piece = text[s : s + step]
                    self.ctx.decode(piece, s, 0, logits="all")
                    total += self.ctx.embeddings(len(piece)).sum(axis=0, dtype=np.float64)
                out[i] = total / len(text)
        finally:
            self.ctx.clear()
        return out

    def cancel(self) -> None:
        self.ctx.cancel()

    def close(self) -> None:
        """Free the context and give back the use of the model. Safe to call twice."""
        if getattr(self, "ctx", None) is not None:
            self.ctx.close()
            self.ctx = None  # type: ignore[assignment]
            self.model.close()


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])
assert _TOKEN_DATA.itemsize == ctypes.sizeof(lc.llama_token_data)


class Sampler:
    """A llama.cpp sampler chain: a repeat penalty over the last ``REPEAT_LAST_N`` generated
    tokens when ``repeat_penalty`` is not 1, then greedy at temp 0, else
    top-k/top-p/min-p/temp/dist.

    With a ``grammar`` (GBNF, rule ``root``; ``model`` gives the vocabulary) every token
    must match it, checked as llama.cpp's common sampler does: the chain samples first and
    the grammar checks only that token; only when it rejects it is the grammar applied to
    the whole vocabulary and the chain run again over what is left (a grammar over all
    tokens at every step costs milliseconds per token at large vocabularies). ``resampled``
    counts those second passes."""

    REPEAT_LAST_N = 64  # llama.cpp's and Ollama's default window

    def __init__(
        self,
        temp: float = 0.0,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        seed: int = 0xFFFFFFFF,
        repeat_penalty: float = 1.0,
        n_vocab: int = 0,
        grammar: str | None = None,
        model: Model | None = None,
    ) -> None:
        _ensure_backend()
        self._grammar = None
        self.resampled = 0
        if grammar:
            if model is None:
                raise LocalsymError("a grammar needs the model's vocabulary")
            _recent_errors().clear()
            g = lc.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
            if not g:
                raise LocalsymError(f"the grammar does not parse: {_last_error('see the log')}")
            self._grammar = g
            self._n_vocab = model.n_vocab
            self._cands = np.zeros(model.n_vocab, _TOKEN_DATA)
            self._ids = np.arange(model.n_vocab, dtype=np.int32)
            self._one = np.zeros(1, _TOKEN_DATA)
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if repeat_penalty != 1.0:
            if not (repeat_penalty > 0 and math.isfinite(repeat_penalty)) or n_vocab <= 0:
                lc.llama_sampler_free(chain)
                self.close()
                raise LocalsymError(f"repeat penalty must be a positive number, not {repeat_penalty}")
            # this llama.cpp's signature: (n_vocab, last_n, repeat, freq, present)
            lc.llama_sampler_chain_add(
                chain, lc.llama_sampler_init_penalties(n_vocab, self.REPEAT_LAST_N, repeat_penalty, 0.0, 0.0)
            )
        if temp <= 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(top_k))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(min_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temp))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        self._ptr = chain

    def sample(self, ctx: Context, idx: int = -1) -> int:
        """Sample from output ``idx`` of the last decode and accept the token."""
        if self._grammar is None:
            return int(lc.llama_sampler_sample(self._ptr, ctx._ptr, idx))
        ptr = lc.llama_get_logits_ith(ctx._ptr, idx)
        if not ptr:
            raise LocalsymError("no logits for that output")
        logits = np.ctypeslib.as_array(ptr, shape=(self._n_vocab,))
        tok = self._run(logits, with_grammar=False)
        one = self._one
        one["id"], one["logit"], one["p"] = tok, 1.0, 0.0
        self._apply(self._grammar, one)
        if not math.isfinite(float(one["logit"][0])):  # the grammar rejects it: choose among what it allows
            self.resampled += 1
            tok = self._run(logits, with_grammar=True)
        lc.llama_sampler_accept(self._grammar, tok)
        lc.llama_sampler_accept(self._ptr, tok)
        return tok

    @staticmethod
    def _apply(smpl, cands: np.ndarray) -> tuple[int, float] | None:
        """Run sampler ``smpl`` over ``cands`` in place; the (token, logit) it selected."""
        arr = lc.llama_token_data_array(
            cands.ctypes.data_as(ctypes.POINTER(lc.llama_token_data)), len(cands), -1, False
        )
        lc.llama_sampler_apply(smpl, ctypes.byref(arr))
        if arr.selected < 0 or arr.selected >= arr.size:
            return None
        d = arr.data[arr.selected]  # samplers may sort and shrink, always in the same buffer
        return int(d.id), float(d.logit)

    def _run(self, logits: np.ndarray, with_grammar: bool) -> int:
        c = self._cands
        c["id"], c["logit"], c["p"] = self._ids, logits, 0.0
        if with_grammar:
            self._apply(self._grammar, c)
            if not np.isfinite(c["logit"]).any():
                raise LocalsymError("the grammar allows no token here")
        got = self._apply(self._ptr, c)
        if got is None or (with_grammar and not math.isfinite(got[1])):
            raise LocalsymError("the grammar allows no token here")
        return got[0]

    def reset(self) -> None:
        lc.llama_sampler_reset(self._ptr)
        if self._grammar is not None:
            lc.llama_sampler_reset(self._grammar)

    def close(self) -> None:
        if getattr(self, "_ptr", None):
            lc.llama_sampler_free(self._ptr)
            self._ptr = None
        if getattr(self, "_grammar", None):
            lc.llama_sampler_free(self._grammar)
            self._grammar = None

    def __del__(self) -> None:
        self.close()
