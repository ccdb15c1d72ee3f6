"""Which format each layer of a block is kept in: F16, Q8, Q4, Q3 or Q2, chosen by error.

Q8 groups per token (K and V). Q4/Q3/Q2 follow KIVI: K per channel (its outlier channels
get their own ranges), V per token. For each layer of a block, K and V apart, the policy
takes the cheapest allowed format whose error stays under a threshold. K's error is judged
through attention (how far a q.k/sqrt(d) logit moves, which softmax amplifies), V's by
relative L2.

The errors are estimated in closed form from the group ranges a single pass measures
(``kernels_numba.kv_block.ranges``), not by encoding every format and measuring it: a
group of step s rounds with an error spread evenly over [-s/2, s/2], variance s^2/12. So
V's relative L2 is sqrt(sum n_g s_g^2 / 12) / |V|, and a query q moves a logit by a sum of
such errors weighted by q, whose standard deviation follows from q^2 and the steps; the
largest move over a block's cells is taken as sqrt(2 ln 2C) standard deviations. Sample
queries are the block's own keys (within a head, queries and keys are trained into the
same space). ``k_error``/``v_error`` measure the real thing, for calibration and tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kernels_numba import kv_block as kb

ORDER = ("q2", "q3", "q4", "q8", "f16")  # cheapest first
BITS = {"q2": 2, "q3": 3, "q4": 4, "q8": 8, "f16": 16}
FMT_OF_BITS = {b: f for f, b in BITS.items()}
N_QUERIES = 16


def k_per_channel(fmt: str) -> bool:
    return fmt in ("q4", "q3", "q2")


@dataclass
class QuantPolicy:
    """Which formats a tier may use and how much error each of K and V may take."""

    formats: tuple[str, ...] = ("q8", "q4", "q3", "q2")
    # On SmolLM2-135M (stdlib source) K's logit change runs ~0.09 at q8, ~0.7 at q4, ~1.5 at
    # q3, ~3.6 at q2; V's relative L2 ~0.006, ~0.10, ~0.22, ~0.5.
    # Chosen on `bench quant` (SmolLM2, one run, the same context): K 1.0 / V 0.2 gave 3.35x
    # at ppl 0.977 (0.5% more bytes than uniform Q4); 1.2 / 0.22 gives 3.72x at 0.9996,
    # below uniform Q4's 1.0034 with 10% fewer bytes; 1.2 / 0.25 3.89x at 1.012 (above Q4's).
    k_threshold: float = 1.2
    v_threshold: float = 0.22
    fixed: str | None = None  # one format for everything (benchmarks, tests)

    def candidates(self, floor: str | None = None) -> list[str]:
        if self.fixed:
            return [self.fixed]
        allowed = [f for f in ORDER if f in self.formats or f == "f16"]
        if floor is not None:  # pinned blocks: nothing cheaper than ``floor``
            allowed = [f for f in allowed if ORDER.index(f) >= ORDER.index(floor)]
        return allowed


DEFAULT_POLICY = QuantPolicy()


@dataclass
class Ranges:
    """One pass over a run of layers [L, cells, width] (f16 bits): group ranges for the
    error estimates and the encoder's parameters."""

    tlo: np.ndarray  # per-token groups [L, cells, ceil(width / 64)]
    thi: np.ndarray
    clo: np.ndarray  # per-channel groups [L, ceil(cells / 32), width] (K only)
    chi: np.ndarray
    sumsq: np.ndarray  # [L]

    def __post_init__(self) -> None:
        self._params: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def has_channels(self) -> bool:
        return self.clo.shape[2] > 0

    @classmethod
    def measure(cls, x: np.ndarray, channel: bool, token: np.ndarray | None = None) -> Ranges:
        """``token``: the layers whose per-token ranges are wanted (default all)."""
        return cls(*kb.ranges(x, channel, token))

    def add_token(self, x: np.ndarray, layers: np.ndarray) -> None:
        """Per-token ranges for more ``layers`` (a mask): K measures them only where Q8 is
        a candidate."""
        tlo, thi, _, _, ss = kb.ranges(x, False, layers)
        self.tlo[layers], self.thi[layers], self.sumsq[layers] = tlo[layers], thi[layers], ss[layers]
        self._params.clear()

    def params(self, fmt: str, per_channel: bool) -> tuple[np.ndarray, np.ndarray]:
        """f16 minimum and step of every group of every layer: [L, rows, groups] each."""
        key = (fmt, per_channel)
        if key not in self._params:  # once per format for every layer of the run
            lo, hi = (self.clo, self.chi) if per_channel else (self.tlo, self.thi)
            self._params[key] = kb.params_from_ranges(lo, hi, BITS[fmt])
        return self._params[key]


def _levels(fmt: str) -> float:
    return float((1 << BITS[fmt]) - 1)


def v_errors(r: Ranges, width: int) -> dict[str, np.ndarray]:
    """Estimated relative L2 error per layer of every format: a group's step is its range
    over the format's levels (the f16 rounding of the step moves this by < 0.1%)."""
    gt = r.tlo.shape[2]
    n_g = np.full(gt, kb.GROUP_TOKEN, np.float32)
    n_g[-1] = width - kb.GROUP_TOKEN * (gt - 1)
    span = r.thi - r.tlo
    base = np.sqrt(((span * span) * n_g).sum(axis=(1, 2), dtype=np.float64) / 12.0)
    base /= np.sqrt(np.maximum(r.sumsq, 1e-30))
    out = {fmt: base / _levels(fmt) for fmt in ("q8", "q4", "q3", "q2")}
    out["f16"] = np.zeros(len(base))
    return out


def sample_queries(x: np.ndarray) -> np.ndarray:
    """[L, q, width] float32: every (cells / 16)-th key of each layer."""
    step = max(1, x.shape[1] // N_QUERIES)
    return x[:, ::step, :].view(np.float16).astype(np.float32)


# The estimate's ratio to the measured error on real keys (SmolLM2-135M, stdlib source,
# 60 layer-blocks; correlation 0.95-0.97): the expected maximum overstates what the block's
# own queries see by a steady factor, larger for Q8's per-cell steps.
K_CALIBRATION = {"per_channel": 1.46, "q8": 1.93}


def k_errors(
    r: Ranges, queries: np.ndarray, n_head_kv: int, q8_layers: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Estimated mean (over sample queries and heads) of the largest logit change over a
    block's cells, per layer and format. Q4/Q3/Q2 share their groups, so one product serves
    all three; Q8 only for ``q8_layers`` (rarely needed: a product over every cell), inf
    elsewhere."""
    L, nq, W = queries.shape
    C = r.tlo.shape[1]
    hd = W // n_head_kv
    q2 = (queries * queries).reshape(L, nq, n_head_kv, hd).transpose(0, 2, 1, 3)  # [L, H, q, hd]
    kappa = math.sqrt(2 * math.log(2 * C)) / math.sqrt(12.0 * hd)
    span = (r.chi - r.clo).transpose(0, 2, 1)  # [L, W, groups]
    var = np.matmul(q2, (span * span).reshape(L, n_head_kv, hd, -1))  # [L, H, q, groups]
    base = kappa / K_CALIBRATION["per_channel"] * np.sqrt(var.max(axis=3)).mean(axis=(1, 2), dtype=np.float64)
    out = {fmt: base / _levels(fmt) for fmt in ("q4", "q3", "q2")}
    out["f16"] = np.zeros(L)
    q8 = np.full(L, np.inf)
    layers = np.flatnonzero(q8_layers) if q8_layers is not None else np.zeros(0, np.int64)
    if len(layers):
        sp = r.thi[layers] - r.tlo[layers]  # [n, C, groups of channels]
        sc = np.repeat(sp, kb.GROUP_TOKEN, axis=2)[:, :, :W].reshape(len(layers), C, n_head_kv, hd)
        var8 = np.matmul(q2[layers], (sc * sc).transpose(0, 2, 3, 1))  # [n, H, q, C]
        q8[layers] = (
            kappa / K_CALIBRATION["q8"] / _levels("q8") * np.sqrt(var8.max(axis=3)).mean(axis=(1, 2), dtype=np.float64)
        )
    out["q8"] = q8
    return out


def choose(errors: dict[str, np.ndarray], policy: QuantPolicy, threshold: float, floor: str | None) -> list[str]:
    """Per layer, the cheapest candidate whose error is under ``threshold`` (f16 always is)."""
    cands = policy.candidates(floor)
    out = []
    for layer in range(len(errors["f16"])):
        for fmt in cands:
            if policy.fixed or fmt == "f16" or errors[fmt][layer] <= threshold:
                out.append(fmt)
                break
    return out


def plan_k(k: np.ndarray, policy: QuantPolicy, n_head_kv: int, floor: str | None = None) -> tuple[list[str], Ranges]:
    """Every layer's K format for a run of layers (f16 bits [L, C, W]), and the ranges the
    encoder reuses: one pass over the keys."""
    L = k.shape[0]
    if policy.fixed:
        per_token = not k_per_channel(policy.fixed)
        return [policy.fixed] * L, Ranges.measure(k, True, np.full(L, per_token))
    r = Ranges.measure(k, True, np.zeros(L, bool))
    queries = sample_queries(k)
    err = k_errors(r, queries, n_head_kv)
    cands = policy.candidates(floor)
    need_q8 = err["q4"] > policy.k_threshold if "q4" in cands else np.ones(L, bool)
    if "q8" in cands and need_q8.any():
        r.add_token(k, need_q8)
        err["q8"] = k_errors(r, queries, n_head_kv, need_q8)["q8"]
    return choose(err, policy, policy.k_threshold, floor), r


def plan_v(v: np.ndarray, policy: QuantPolicy, floor: str | None = None) -> tuple[list[str], Ranges]:
    r = Ranges.measure(v, False)
    if policy.fixed:
        return [policy.fixed] * v.shape[0], r
    return choose(v_errors(r, v.shape[2]), policy, policy.v_threshold, floor), r


# -- measured errors (calibration and tests) ---------------------------------------------------


def k_error(k: np.ndarray, k_hat: np.ndarray, n_head_kv: int, queries: np.ndarray | None = None) -> float:
    """Mean over sample queries of the largest change in a q.k/sqrt(d) logit, per head."""
    cells, width = k.shape
    hd = width // n_head_kv
    q = k if queries is None else queries
    step = max(1, len(q) // N_QUERIES)
    q = q[::step].reshape(-1, n_head_kv, hd)
    d = (k_hat - k).reshape(cells, n_head_kv, hd)
    delta = np.einsum("qhd,chd->qhc", q, d) / np.sqrt(hd)
    return float(np.abs(delta).max(axis=2).mean())


def v_error(v: np.ndarray, v_hat: np.ndarray) -> float:
    return float(np.linalg.norm(v_hat - v) / (np.linalg.norm(v) + 1e-12))


def mix_summary(mix: dict[str, int]) -> str:
    """{"K:q8": 12, "K:q4": 48, "V:q4": 60} -> "K q8 20% q4 80%, V q4 100%"."""
    if not mix:
        return "none yet"
    parts = []
    for kind in ("K", "V"):
        counts = {k.split(":", 1)[1]: n for k, n in mix.items() if k.startswith(kind + ":")}
        total = sum(counts.values()) or 1
        parts.append(
            f"{kind} " + " ".join(f"{f} {100 * counts[f] / total:.0f}%" for f in reversed(ORDER) if f in counts)
        )
    return ", ".join(parts)
