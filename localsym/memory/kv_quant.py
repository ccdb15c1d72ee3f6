"""Per-block, per-layer KV quantization: F16, Q8, Q4, Q3, Q2, and an adaptive choice.

Q8 groups per token (K and V). Q4/Q3/Q2 follow KIVI: K per channel (its outlier channels
get their own ranges), V per token. The adaptive policy picks, for each layer of a block,
the cheapest format whose error stays under a threshold, K and V apart: K's error is judged
through attention (the change of q.k logits for sample queries, which softmax amplifies),
V's by relative L2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels_numba import quant as qk

# name -> (bits, K grouped per channel?, group)
FORMATS: dict[str, tuple[int, bool, int]] = {
    "q8": (8, False, 32),
    "q4": (4, True, 32),
    "q3": (3, True, 32),
    "q2": (2, True, 32),
}
ORDER = ("q2", "q3", "q4", "q8", "f16")  # cheapest first
V_GROUP = 64  # V (per token) groups along channels


@dataclass
class QTensor:
    """One quantized 2-D tensor [rows, cols] as stored (maybe transposed first)."""

    fmt: str
    shape: tuple[int, int]  # the original [cells, width]
    transposed: bool
    packed: np.ndarray | None  # uint8 codes; None for f16
    zero: np.ndarray | None  # f16 per group
    scale: np.ndarray | None  # f16 per group
    raw: np.ndarray | None = None  # the f16 values when fmt == "f16"
    bits: int = 16
    group: int = 0

    @property
    def nbytes(self) -> int:
        if self.fmt == "f16":
            return int(self.raw.nbytes)
        return int(self.packed.nbytes + self.zero.nbytes + self.scale.nbytes)


def quantize(x: np.ndarray, fmt: str, per_channel: bool | None = None, group: int | None = None) -> QTensor:
    """Quantize [cells, width] float data; ``per_channel`` groups along cells (K in KIVI)."""
    if fmt == "f16":
        return QTensor("f16", x.shape, False, None, None, None, raw=np.asarray(x, np.float16))
    bits, k_per_channel, k_group = FORMATS[fmt]
    pc = k_per_channel if per_channel is None else per_channel
    g = group or (k_group if pc else V_GROUP)
    a = np.ascontiguousarray((x.T if pc else x), dtype=np.float32)
    lo, hi = qk.group_minmax(a, g)
    # Round the group parameters to f16 first, then encode against the rounded values, so
    # what is stored decodes exactly as the encoder assumed.
    zero = lo.astype(np.float16)
    scale = ((hi - zero.astype(np.float32)) / ((1 << bits) - 1)).astype(np.float16)
    packed = qk.encode(a, zero.astype(np.float32), scale.astype(np.float32), bits, g)
    return QTensor(fmt, x.shape, pc, packed, zero, scale, bits=bits, group=g)


def dequantize(t: QTensor) -> np.ndarray:
    """Back to float32 [cells, width]."""
    if t.fmt == "f16":
        return t.raw.astype(np.float32)
    cols = t.shape[0] if t.transposed else t.shape[1]
    out = qk.decode(t.packed, t.zero.astype(np.float32), t.scale.astype(np.float32), t.bits, t.group, cols)
    return out.T if t.transposed else out


def k_error(k: np.ndarray, k_hat: np.ndarray, n_head_kv: int, queries: np.ndarray | None = None) -> float:
    """Mean over sample queries of the largest change in a q.k/sqrt(d) logit, per head.

    Without real queries the block's own keys stand in for them: within a head, queries
    and keys are trained into the same space.
    """
    cells, width = k.shape
    hd = width // n_head_kv
    q = k if queries is None else queries
    step = max(1, len(q) // 16)
    q = q[::step].reshape(-1, n_head_kv, hd)
    d = (k_hat - k).reshape(cells, n_head_kv, hd)
    delta = np.einsum("qhd,chd->qhc", q, d) / np.sqrt(hd)
    return float(np.abs(delta).max(axis=2).mean())


def v_error(v: np.ndarray, v_hat: np.ndarray) -> float:
    return float(np.linalg.norm(v_hat - v) / (np.linalg.norm(v) + 1e-12))


@dataclass
class QuantPolicy:
    """Which formats a tier may use and how much error each of K and V may take."""

    formats: tuple[str, ...] = ("q8", "q4", "q3", "q2")
    # Calibrated on SmolLM2-135M with `localsym bench quant` (1024 tokens of stdlib source,
    # 128-token blocks): K's q.k change in logit units runs ~0.8 at q4, ~1.8 at q3, ~4.3 at
    # q2; V's relative L2 ~0.07 at q4, ~0.2 at q3, ~0.45 at q2. These thresholds gave a
    # 4.06x ratio at a perplexity ratio of 1.034.
    k_threshold: float = 2.0
    v_threshold: float = 0.22
    fixed: str | None = None  # one format for everything (benchmarks, tests)

    def candidates(self, floor: str | None = None) -> list[str]:
        allowed = [f for f in ORDER if f in self.formats or f == "f16"]
        if floor is not None:  # pinned blocks: nothing cheaper than ``floor``
            allowed = [f for f in allowed if ORDER.index(f) >= ORDER.index(floor)]
        return allowed


WARM_POLICY = QuantPolicy(formats=("q8", "q4"))
COLD_POLICY = QuantPolicy(formats=("q8", "q4", "q3", "q2"))


@dataclass
class LayerChoice:
    k: QTensor
    v: QTensor
    k_err: float
    v_err: float


@dataclass
class QuantReport:
    choices: list[LayerChoice] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(c.k.nbytes + c.v.nbytes for c in self.choices)

    def mix(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.choices:
            for t, kind in ((c.k, "K"), (c.v, "V")):
                key = f"{kind}:{t.fmt}"
                out[key] = out.get(key, 0) + 1
        return out


def _choose(x: np.ndarray, policy: QuantPolicy, floor: str | None, threshold: float,
            per_channel: bool | None, error) -> tuple[QTensor, float]:
    """The cheapest allowed format whose error stays under ``threshold`` (f16 always does)."""
    if policy.fixed:
        t = quantize(x, policy.fixed, per_channel=per_channel)
        return t, error(dequantize(t))
    for fmt in policy.candidates(floor):
        t = quantize(x, fmt, per_channel=per_channel)
        err = error(dequantize(t)) if fmt != "f16" else 0.0
        if err <= threshold or fmt == "f16":
            return t, err
    raise AssertionError("unreachable: f16 always qualifies")


def choose_k(k: np.ndarray, policy: QuantPolicy, n_head_kv: int, floor: str | None = None,
             queries: np.ndarray | None = None) -> tuple[QTensor, float]:
    return _choose(k, policy, floor, policy.k_threshold, None,
                   lambda k_hat: k_error(k, k_hat, n_head_kv, queries))


def choose_v(v: np.ndarray, policy: QuantPolicy, floor: str | None = None) -> tuple[QTensor, float]:
    return _choose(v, policy, floor, policy.v_threshold, False, lambda v_hat: v_error(v, v_hat))


def quantize_layers(ks: list[np.ndarray], vs: list[np.ndarray], policy: QuantPolicy, n_head_kv: int,
                    floor: str | None = None) -> QuantReport:
    """Quantize every layer's K [cells, width] and V [cells, width] of one block."""
    return quantize_tiers(ks, vs, (policy,), n_head_kv, floor)[0]


def quantize_tiers(ks: list[np.ndarray], vs: list[np.ndarray], policies: tuple[QuantPolicy, ...],
                   n_head_kv: int, floor: str | None = None) -> list[QuantReport]:
    """One report per policy (a block sealed into cold and warm) from one set of trials.

    The first policy chooses; a later one with the same thresholds takes that choice
    raised to its own cheapest allowed format when the choice is cheaper: errors fall as
    bits rise, so a format under the threshold means every dearer one is too. Its error is
    then reported as the cheaper format's, an upper bound.
    """
    reps = [QuantReport() for _ in policies]
    first = policies[0]
    for k, v in zip(ks, vs):
        k32, v32 = np.asarray(k, np.float32), np.asarray(v, np.float32)
        kt, ke = choose_k(k32, first, n_head_kv, floor)
        vt, ve = choose_v(v32, first, floor)
        reps[0].choices.append(LayerChoice(kt, vt, ke, ve))
        for rep, pol in zip(reps[1:], policies[1:]):
            k2 = _raised(k32, kt, first, pol, floor, None)
            v2 = _raised(v32, vt, first, pol, floor, False)
            k2, k2e = (k2, ke) if k2 is not None else choose_k(k32, pol, n_head_kv, floor)
            v2, v2e = (v2, ve) if v2 is not None else choose_v(v32, pol, floor)
            rep.choices.append(LayerChoice(k2, v2, k2e, v2e))
    return reps


def _raised(x: np.ndarray, t: QTensor, chose: QuantPolicy, pol: QuantPolicy, floor: str | None,
            per_channel: bool | None) -> QTensor | None:
    """What ``pol`` would choose given that ``chose`` picked ``t`` (every cheaper format it
    tried failed, ``t`` passed), or None when that takes trials of its own."""
    if pol.fixed or chose.fixed or (pol.k_threshold, pol.v_threshold) != (chose.k_threshold, chose.v_threshold):
        return None
    allowed, tried = pol.candidates(floor), chose.candidates(floor)
    rank = ORDER.index(t.fmt)
    if any(f not in tried for f in allowed if ORDER.index(f) < rank):
        return None  # pol allows a cheaper format that was never tried
    if t.fmt in allowed:
        return t
    dearer = [f for f in allowed if ORDER.index(f) > rank]
    return quantize(x, dearer[0], per_channel=per_channel) if dearer else None


def mix_summary(mix: dict[str, int]) -> str:
    """{"K:q8": 12, "K:q4": 48, "V:q4": 60} -> "K q8 20% q4 80%, V q4 100%"."""
    if not mix:
        return "none yet"
    parts = []
    for kind in ("K", "V"):
        counts = {k.split(":", 1)[1]: n for k, n in mix.items() if k.startswith(kind + ":")}
        total = sum(counts.values()) or 1
        parts.append(f"{kind} " + " ".join(f"{f} {100 * counts[f] / total:.0f}%" for f in reversed(ORDER) if f in counts))
    return ", ".join(parts)
