"""The question's query vectors, read from llama.cpp while the question runs alone
through a small second context (the hot context stays as it is, and its eval callback
stays off)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from localsym.errors import LocalsymError
from localsym.memory.attention_keys import REPS, RopeSpec, block_keys, query_summary, select_layers
from localsym.runtime.bridge import Context, Model, TensorEvent
from localsym.runtime.kv_state import SeqState

log = logging.getLogger("localsym.retrieval")


class QueryProbe:
    """Keeps, per chosen layer, the last tensor named ``Qcur-L`` of the graph: llama.cpp
    names the projection, then the rotated query, with that name; the last is post-RoPE."""

    def __init__(self, model: Model, layers: Sequence[int], n_ctx: int = 256) -> None:
        self.layers = list(layers)
        self.n_head, self.head_dim = model.n_head, model.head_dim
        self._slot = {f"Qcur-{layer}": i for i, layer in enumerate(self.layers)}
        self._got: dict[int, np.ndarray] = {}
        self.n_ctx = n_ctx
        self.ctx = Context(model, n_ctx, n_batch=n_ctx, observer=(self._want, self._handle))

    def _want(self, name: str) -> bool:
        return name in self._slot

    def _handle(self, ev: TensorEvent) -> None:
        # the data lives only until the graph moves on: copy it now
        self._got[self._slot[ev.name]] = ev.read_f32().reshape(-1, self.n_head, self.head_dim)

    def queries(self, tokens: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
        """Per chosen layer [tokens, n_head, head_dim] post-RoPE queries, and their positions."""
        toks = list(tokens)[-(self.n_ctx - 1) :]
        self._got.clear()
        self.ctx.seq_rm(0)
        self.ctx.decode(toks, 0, 0, logits="none")
        self.ctx.seq_rm(0)
        missing = [self.layers[i] for i in range(len(self.layers)) if i not in self._got]
        if missing:
            raise LocalsymError(f"no Qcur tensor seen for layers {missing}")
        return [self._got[i] for i in range(len(self.layers))], np.arange(len(toks))

    def close(self) -> None:
        self.ctx.close()


class AttentionSignal:
    """A session's attention-native scoring: which layers, the RoPE to undo, representative
    keys from a sealed block's state, and the question's mean queries from the probe."""

    def __init__(self, model: Model, rope: tuple[str, int, float]) -> None:
        kind, n_rot, base = rope
        self.model = model
        self.spec = RopeSpec(n_rot, base, kind == "neox")
        self.layers = select_layers(model.n_layer)
        self.n_kv = model.n_head_kv
        self.shape = (len(self.layers), model.n_head_kv, REPS, model.head_dim)
        self._probe: QueryProbe | None = None
        self._failed = False

    @classmethod
    def for_model(cls, model: Model, type_k: str) -> AttentionSignal | None:
        """None where keys cannot be read as floats (a quantized K cache) or the model's
        RoPE is not a plain one (see ``Model.rope``)."""
        rope = model.rope
        return cls(model, rope) if rope is not None and type_k in ("f16", "f32") else None

    def keys_of(self, state: SeqState) -> bytes | None:
        if len(state.caches) != 1 or len(state.caches[0]) != 1:
            return None
        s = state.caches[0][0]
        if any(s.k_types[layer] not in (0, 1) for layer in self.layers):  # f32 / f16 only
            return None
        return block_keys([s.k[layer] for layer in self.layers], s.positions, self.n_kv, self.spec).tobytes()

    def query(self, tokens: Sequence[int]) -> np.ndarray | None:
        """The question's mean queries, or None when this model's graph names its queries
        otherwise (the sketch and pointers then select alone; an answer never fails on it)."""
        if self._failed:
            return None
        try:
            if self._probe is None:
                self._probe = QueryProbe(self.model, self.layers)
            qs, pos = self._probe.queries(tokens)
        except LocalsymError as e:
            log.warning("attention-native scoring off for this session: %s", e)
            self._failed = True
            return None
        return query_summary(qs, pos, self.spec)

    def close(self) -> None:
        if self._probe is not None:
            self._probe.close()
            self._probe = None
