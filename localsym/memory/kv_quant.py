"""Which format each layer of a block is kept in: F16, Q8, Q4, Q3 or Q2, chosen by error.

Q8 groups per token (K and V). Q4/Q3/Q2 follow KIVI: K per channel (its outlier channels
get their own ranges), V per token. For each layer of a block, K and V apart, the policy
takes the cheapest allowed format whose error stays under a threshold. K's error is judged
through attention (how far a q.k/sqrt(d) logit moves, which softmax amplifies), V's by
relative L2.

The errors are estimated in closed form from the group ranges a single pass measures
(inside ``kernels_numba.kv_seal``, which also encodes), not by encoding every format: a
group of step s rounds with an error spread evenly over [-s/2, s/2], variance s^2/12. So
V's relative L2 is sqrt(sum n_g s_g^2 / 12) / |V|, and a query q moves a logit by a sum of
such errors weighted by q, whose standard deviation follows from q^2 and the steps; the
largest move over a block's cells is taken as sqrt(2 ln 2C) standard deviations. Sample
queries are the block's own keys (within a head, queries and keys are trained into the
same space). ``k_error``/``v_error`` measure the real thing, for calibration and tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernels_numba import kv_seal

ORDER = ("q2", "q3", "q4", "q8", "f16")  # cheapest first
BITS = {"q2": 2, "q3": 3, "q4": 4, "q8": 8, "f16": 16}
FMT_OF_BITS = {b: f for f, b in BITS.items()}
N_QUERIES = kv_seal.N_QUERIES


def k_per_channel(fmt: str) -> bool:
    return fmt in ("q4", "q3", "q2")


@dataclass
class QuantPolicy:
    """Which formats a tier may use and how much error each of K and V may take."""

    formats: tuple[str, ...] = ("q8", "q4", "q3", "q2")
    # On SmolLM2-135M (stdlib source) K's logit change runs ~0.09 at q8, ~0.7 at q4, ~1.5 at
    # q3, ~3.6 at q2; V's relative L2 ~0.006, ~0.10, ~0.22, ~0.5.
    # Chosen on `bench quant` (SmolLM2, stdlib source, perplexity pooled over its windows):
    # the cheapest pair tried that is on the Pareto front of the uniform formats in both evals.
    # Default eval (4 windows of 1024 tokens, 1020 scored): 4.22x at ppl 1.024, KLD 0.033 vs
    # Q3 4.27x at 1.030, KLD 0.043. --context 3072 --follow 1024 --block 256 --windows 2:
    # 4.20x at 1.016, KLD 0.019 vs Q3 1.042, KLD 0.036. 1.2 / 0.22 keeps 12% more bytes for
    # half the divergence (3.71x at 1.008, KLD 0.017). One window alone can rank 2.0 / 0.3
    # below Q3 (the first default window did: 1.045 vs 1.038): pooling is what made it stable.
    k_threshold: float = 2.0
    v_threshold: float = 0.3
    fixed: str | None = None  # one format for everything (benchmarks, tests)

    def candidates(self, floor: str | None = None) -> list[str]:
        if self.fixed:
            return [self.fixed]
        allowed = [f for f in ORDER if f in self.formats or f == "f16"]
        if floor is not None:  # pinned blocks: nothing cheaper than ``floor``
            allowed = [f for f in allowed if ORDER.index(f) >= ORDER.index(floor)]
        return allowed


DEFAULT_POLICY = QuantPolicy()


# The estimate's ratio to the measured error on real keys (SmolLM2-135M, stdlib source,
# 60 layer-blocks; correlation 0.95-0.97): the expected maximum overstates what the block's
# own queries see by a steady factor, larger for Q8's per-cell steps.
K_CALIBRATION = {"per_channel": 1.46, "q8": 1.93}


def seal_run(
    x: np.ndarray, key: bool, policy: QuantPolicy, n_head_kv: int, floor: str | None = None
) -> kv_seal.SealedRun:
    """Every layer of a run of K (``key``) or V layers (f16 bits [L, C, W]) sealed in the
    cheapest candidate format whose estimated error is under the policy's threshold: one
    kernel call measures, chooses and encodes."""
    allowed = np.array([BITS[f] for f in policy.candidates(floor)], np.uint8)
    threshold = policy.k_threshold if key else policy.v_threshold
    calib = (K_CALIBRATION["per_channel"], K_CALIBRATION["q8"])
    return kv_seal.seal(x, allowed, bool(policy.fixed), threshold, key, n_head_kv, calib)


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
