"""A block's KV as it lives in the warm and cold tiers: quantized per layer, detached from
positions, convertible back into a llama.cpp state blob at any base position."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localsym.memory import container
from localsym.memory import kv_quant as kq
from localsym.runtime import kv_state

F16_TYPES = (kv_state.GGML_F16, kv_state.GGML_F32)


@dataclass
class EncodedStream:
    k_types: list[int]
    v_types: list[int]
    v_trans: bool
    k: list[kq.QTensor | np.ndarray]  # QTensor, or raw rows for quantized cache types
    v: list[kq.QTensor | np.ndarray]


@dataclass
class EncodedBlock:
    n_tokens: int
    streams: list[list[EncodedStream]]  # caches -> streams (one stream per cache here)
    mix: dict[str, int]

    @property
    def nbytes(self) -> int:
        n = 0
        for cache in self.streams:
            for s in cache:
                for t in (*s.k, *s.v):
                    n += t.nbytes
        return n

    # -- from / to llama.cpp ----------------------------------------------------------------
    @classmethod
    def from_state(cls, state: kv_state.SeqState, policy: kq.QuantPolicy, n_head_kv: int,
                   floor: str | None = None) -> "EncodedBlock":
        return cls.tiers_from_state(state, (policy,), n_head_kv, floor)[0]

    @classmethod
    def tiers_from_state(cls, state: kv_state.SeqState, policies: tuple[kq.QuantPolicy, ...], n_head_kv: int,
                         floor: str | None = None) -> list["EncodedBlock"]:
        """One block per policy (cold and warm) from one set of format trials."""
        caches: list[list[list[EncodedStream]]] = [[] for _ in policies]
        mixes: list[Counter[str]] = [Counter() for _ in policies]
        for cache in state.caches:
            outs: list[list[EncodedStream]] = [[] for _ in policies]
            for s in cache:
                if all(t in F16_TYPES for t in (*s.k_types, *s.v_types)):
                    reps = kq.quantize_tiers(s.k, s.v, policies, n_head_kv, floor)
                    for out, mix, rep in zip(outs, mixes, reps):
                        out.append(EncodedStream(list(s.k_types), list(s.v_types), s.v_trans,
                                                 [c.k for c in rep.choices], [c.v for c in rep.choices]))
                        mix.update(rep.mix())
                else:  # quantized live cache types (-ctk q8_0 ...): keep the rows as they are
                    ks = [np.array(k) for k in s.k]
                    vs = [np.array(v) for v in s.v]
                    for out in outs:
                        out.append(EncodedStream(list(s.k_types), list(s.v_types), s.v_trans, ks, vs))
            for dst, out in zip(caches, outs):
                dst.append(out)
        return [cls(state.n_cells, c, dict(mix)) for c, mix in zip(caches, mixes)]

    def to_blob(self, base_pos: int, seq_id: int) -> bytes:
        """A state blob holding this block at positions base_pos .. base_pos + n - 1."""
        positions = np.arange(base_pos, base_pos + self.n_tokens, dtype=np.int32)
        seq_ids = [(seq_id,)] * self.n_tokens
        caches = []
        for cache in self.streams:
            out = []
            for s in cache:
                ks = [_decode(t, kt) for t, kt in zip(s.k, s.k_types)]
                vs = [_decode(t, vt) for t, vt in zip(s.v, s.v_types)]
                out.append(kv_state.KVStream(positions, seq_ids, s.v_trans, s.k_types, s.v_types, ks, vs))
            caches.append(out)
        return kv_state.write(kv_state.SeqState(seq_id, caches))

    # -- cold file ------------------------------------------------------------------------------
    def save(self, path: Path, meta: dict) -> int:
        arrays: dict[str, np.ndarray] = {}
        layout = []
        for ci, cache in enumerate(self.streams):
            for si, s in enumerate(cache):
                entry = {"cache": ci, "stream": si, "k_types": s.k_types, "v_types": s.v_types,
                         "v_trans": s.v_trans, "k": [], "v": []}
                for kind, tensors in (("k", s.k), ("v", s.v)):
                    for li, t in enumerate(tensors):
                        name = f"c{ci}.s{si}.{kind}{li}"
                        entry[kind].append(_store(t, name, arrays))
                layout.append(entry)
        full = dict(meta, n_tokens=self.n_tokens, layout=layout, mix=self.mix,
                    llama_state_version=kv_state.STATE_VERSION)
        return container.write(path, full, arrays)

    @classmethod
    def load(cls, path: Path) -> tuple["EncodedBlock", dict]:
        meta, arrays = container.read(path)
        if meta.get("llama_state_version") != kv_state.STATE_VERSION:
            raise container.CorruptFile(f"{path}: llama.cpp state v{meta.get('llama_state_version')}, "
                                        f"expected v{kv_state.STATE_VERSION}")
        caches: list[list[EncodedStream]] = []
        for entry in meta["layout"]:
            while len(caches) <= entry["cache"]:
                caches.append([])
            ks = [_restore(d, arrays) for d in entry["k"]]
            vs = [_restore(d, arrays) for d in entry["v"]]
            caches[entry["cache"]].append(EncodedStream(entry["k_types"], entry["v_types"], entry["v_trans"], ks, vs))
        return cls(meta["n_tokens"], caches, meta.get("mix", {})), meta


def _decode(t, ggml_type: int) -> np.ndarray:
    if isinstance(t, kq.QTensor):
        return kq.dequantize(t).astype(np.float16 if ggml_type == kv_state.GGML_F16 else np.float32)
    return t


def _store(t, name: str, arrays: dict) -> dict:
    if not isinstance(t, kq.QTensor):
        arrays[name] = t
        return {"fmt": "raw", "name": name}
    d = {"fmt": t.fmt, "name": name, "shape": list(t.shape), "transposed": t.transposed,
         "bits": t.bits, "group": t.group}
    if t.fmt == "f16":
        arrays[name] = t.raw
    else:
        arrays[name + ".p"] = t.packed
        arrays[name + ".z"] = t.zero
        arrays[name + ".s"] = t.scale
    return d


def _restore(d: dict, arrays: dict):
    name = d["name"]
    if d["fmt"] == "raw":
        return arrays[name]
    if d["fmt"] == "f16":
        return kq.QTensor("f16", tuple(d["shape"]), False, None, None, None, raw=arrays[name])
    return kq.QTensor(d["fmt"], tuple(d["shape"]), d["transposed"], arrays[name + ".p"],
                      arrays[name + ".z"], arrays[name + ".s"], bits=d["bits"], group=d["group"])
