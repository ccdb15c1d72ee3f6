"""The block store: a block sealed into the warm and cold tiers in one call, and got back.

Sealing (document blocks and chat turns alike) takes a block's state blob, copied out of
llama.cpp, and hands it to a worker thread, which parses it in place, chooses each layer's
format, encodes every layer in one set of kernel calls, writes the cold file and keeps the
block warm; meanwhile the caller decodes the next block (llama.cpp's ctypes calls and the
Numba kernels release the GIL, so the two overlap). At most ``QUEUE_DEPTH`` seals wait, so
a slow disk slows ingest instead of filling RAM. The caller acknowledges a block (writes
its index row) only once its seal is done, i.e. its file is on disk.

Getting a block back: the warm tier, a seal still in flight, then the cold file. A damaged,
missing or unreadable file is reported as missing (and logged); the caller rebuilds it from
the block's exact tokens, since only it owns a llama.cpp context.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from localsym.memory import heap, kv_quant
from localsym.memory.container import CorruptFile
from localsym.memory.encoded_block import EncodedBlock
from localsym.memory.pinning import PIN_FLOOR
from localsym.memory.query_probe import AttentionSignal
from localsym.memory.tiers import ColdTier, SharedKeys, WarmTier
from localsym.runtime import kv_state

log = logging.getLogger("localsym.memory")
QUEUE_DEPTH = 4


@dataclass
class Sealed:
    key: str
    block: EncodedBlock
    attn: bytes | None  # representative attention keys, for the retriever
    seconds: float  # the seal's own time (parse, choose, encode), without the file write


class BlockStore:
    def __init__(
        self,
        root: Path,
        model_id: str,
        warm_bytes: int,
        cold_bytes: int,
        n_caches: int,
        n_head_kv: int,
        attn: AttentionSignal | None,
        policy: kv_quant.QuantPolicy | None = None,
    ) -> None:
        self.model_id = model_id
        self.n_caches, self.n_head_kv = n_caches, n_head_kv
        self.policy = policy or kv_quant.DEFAULT_POLICY
        self.attn = attn
        self.warm = WarmTier(warm_bytes)
        self.cold = ColdTier(root, cold_bytes)
        self.shared_keys = SharedKeys(root) if attn is not None else None
        self._lock = threading.Lock()  # the warm tier and the shared keys, shared with the worker
        self._pending: dict[str, Future[Sealed]] = {}
        self._slots = threading.BoundedSemaphore(QUEUE_DEPTH)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localsym-seal")
        self._meta: dict[str, dict] = {}  # block key -> its cold file's metadata (reports)
        self.damaged: set[str] = set()  # keys whose cold file was found damaged (not merely missing)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        if self.shared_keys is not None:
            self.shared_keys.close()

    # -- sealing ----------------------------------------------------------------------------
    def seal(self, key: str, blob: bytearray, pos0: int, pinned: bool) -> Future[Sealed]:
        """Queue a block's blob for sealing; blocks while ``QUEUE_DEPTH`` seals wait."""
        self._slots.acquire()
        try:
            fut = self._pool.submit(self._seal, key, blob, pos0, pinned)
        except BaseException:
            self._slots.release()
            raise
        self._pending[key] = fut
        fut.add_done_callback(lambda _f: self._slots.release())
        return fut

    def done(self, fut: Future[Sealed]) -> Sealed:
        """The seal's result (raises what the seal raised); it leaves the in-flight set."""
        try:
            return fut.result()
        finally:
            for k, f in list(self._pending.items()):
                if f is fut:
                    del self._pending[k]

    def encode(self, blob: bytearray, pinned: bool) -> tuple[EncodedBlock, kv_state.SeqState]:
        """A blob parsed in place and encoded (no tier touched)."""
        state = kv_state.parse(blob, self.n_caches)
        return EncodedBlock.seal(state, self.policy, self.n_head_kv, PIN_FLOOR if pinned else None), state

    def _seal(self, key: str, blob: bytearray, pos0: int, pinned: bool) -> Sealed:
        heap.trim()  # the previous seal's blob and the warm blocks it evicted are free by now
        t0 = time.perf_counter()
        eb, state = self.encode(blob, pinned)
        attn = self.attn.keys_of(state) if self.attn is not None else None
        seconds = time.perf_counter() - t0
        self.cold.put(key, eb, {"pos0": pos0, "model_id": self.model_id, "pinned": pinned})
        self._meta[key] = {"pinned": pinned, "mix": eb.mix}
        with self._lock:
            if attn is not None and self.shared_keys is not None:
                self.shared_keys.put(key, attn)
            self.warm.put(key, eb)
        return Sealed(key, eb, attn, seconds)

    # -- getting blocks back ------------------------------------------------------------------
    def has(self, key: str) -> bool:
        return key in self._pending or self.cold.has(key)

    def get(self, key: str) -> EncodedBlock | None:
        """The block from warm, from a seal in flight or from disk; None when its file is
        missing or damaged (logged: the caller rebuilds it from its tokens)."""
        with self._lock:
            eb = self.warm.get(key)
        if eb is not None:
            return eb
        fut = self._pending.get(key)
        if fut is not None:
            return self.done(fut).block
        try:
            eb, _ = self.cold.get(key)
        except (CorruptFile, FileNotFoundError) as e:
            log.warning("block %s is damaged or missing (%s): rebuilding it from its tokens", key[:12], e)
            self._meta.pop(key, None)
            if isinstance(e, CorruptFile):
                self.damaged.add(key)
            return None
        with self._lock:
            self.warm.put(key, eb)
        return eb

    def attention_keys(self, key: str) -> bytes | None:
        if self.shared_keys is None:
            return None
        with self._lock:
            return self.shared_keys.get(key)

    # -- reports ------------------------------------------------------------------------------
    def quant_mix(self, keys: Iterable[str]) -> dict:
        """The formats the blocks are held in (layer-tensors per format, K and V apart) in
        each tier, and how many blocks are pinned at higher precision."""
        warm: Counter[str] = Counter()
        cold: Counter[str] = Counter()
        pinned = 0
        with self._lock:
            for eb in self.warm.blocks():
                warm.update(eb.mix)
        for key in keys:
            meta = self._meta.get(key)
            if meta is None:
                meta = self._meta[key] = self.cold.meta(key) or {}
            pinned += bool(meta.get("pinned"))
            cold.update(meta.get("mix", {}))
        return {"warm": dict(sorted(warm.items())), "cold": dict(sorted(cold.items())), "pinned_blocks": pinned}

    def usage(self) -> dict:
        return {
            "warm_blocks": len(self.warm),
            "warm_bytes": self.warm.used,
            "warm_budget": self.warm.budget,
            "cold_bytes": self.cold.used,
            "cold_budget": self.cold.budget,
        }
