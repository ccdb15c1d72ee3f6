"""Fit a model to a VRAM budget: GPU layers, hot context, KV cache types, flash attention,
and for MoE models how many layers keep their experts on the CPU (``--n-cpu-moe``).

Pure arithmetic over GGUF metadata, so plans for a 7B or a 30B-A3B can be checked on a
machine that has neither the weights nor a GPU.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field, replace

import numpy as np

from localsym.errors import BudgetError, LocalsymError
from localsym.runtime.expert_placement import advise
from localsym.runtime.model_info import ModelInfo

MiB = 1 << 20
GiB = 1 << 30

# Bytes per element of llama.cpp's KV cache types (block bytes / block size).
CACHE_TYPE_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q5_1": 24 / 32,
    "q5_0": 22 / 32,
    "q4_1": 20 / 32,
    "q4_0": 18 / 32,
    "iq4_nl": 18 / 32,
}
GPU_RESERVE = 400 * MiB  # CUDA context, cuBLAS workspace, fragmentation
AUTO_HOT_CTX = (8192, 4096, 2048)  # the hot window: the memory tiers hold the rest
N_UBATCH = 512


def parse_size(text: str) -> int:
    """'8GiB', '16G', '512MiB', '1.5GB' or a plain byte count -> bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(i?[bB])?\s*", text)
    if not m:
        raise LocalsymError(f"cannot read size {text!r}: use a form like 8GiB, 512MiB or 16G")
    unit = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * unit)


def detect_vram() -> int:
    """Free VRAM of the first NVIDIA GPU in bytes, or 0 when there is none."""
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
        return int(float(out[0])) * MiB if out else 0
    except (OSError, subprocess.SubprocessError, ValueError):
        return 0


def vram_budget(text: str | None) -> int:
    if text is None or text == "auto":
        return detect_vram()
    if text in ("cpu", "none"):
        return 0
    return parse_size(text)


@dataclass
class FitPlan:
    device: str  # "gpu" or "cpu"
    vram_budget: int
    n_gpu_layers: int
    n_ctx: int
    type_k: str
    type_v: str
    flash_attn: bool
    n_cpu_moe: int
    parts: dict[str, int] = field(default_factory=dict)  # bytes per part
    notes: list[str] = field(default_factory=list)
    cpu_moe_layers: list[int] | None = None  # which layers' experts stay in RAM; None = the first n_cpu_moe

    @property
    def gpu_bytes(self) -> int:
        return sum(v for k, v in self.parts.items() if k.startswith("gpu_"))

    def sharing(self) -> FitPlan:
        """This plan for an engine on the same weights and the same shared context
        (``serve --parallel``): the same placement, its bytes all another engine's."""
        return replace(
            self,
            parts={k if k.startswith("shared_") else f"shared_{k}": v for k, v in self.parts.items()},
            notes=[*self.notes, "shares the weights and the context of a session already open"],
        )

    def as_dict(self) -> dict:
        return {
            "device": self.device,
            "vram_budget": self.vram_budget,
            "n_gpu_layers": self.n_gpu_layers,
            "n_ctx": self.n_ctx,
            "type_k": self.type_k,
            "type_v": self.type_v,
            "flash_attn": self.flash_attn,
            "n_cpu_moe": self.n_cpu_moe,
            "cpu_moe_layers": self.cpu_moe_layers or list(range(self.n_cpu_moe)),
            "parts": dict(self.parts),
            "gpu_bytes": self.gpu_bytes,
            "notes": list(self.notes),
        }


def _ctx_choices(info: ModelInfo, n_ctx: int | None, parallel: int) -> list[int]:
    """The context sizes to try, largest first: per session (the auto windows, capped at
    the model's own context), times the sessions the context holds."""
    native = info.n_ctx_train or 4096
    per = [min(c, native) for c in AUTO_HOT_CTX] if n_ctx is None else [n_ctx or native]
    return [c * max(parallel, 1) for c in dict.fromkeys(per)]


def _ctx_words(c: int, parallel: int) -> str:
    return f"{parallel} sessions of {c // parallel} tokens" if parallel > 1 else f"a {c}-token context"


def _compute_bytes(info: ModelInfo, n_ctx: int, flash_attn: bool) -> int:
    """Rough size of llama.cpp's compute buffer for one ubatch."""
    logits = 4 * info.n_vocab * N_UBATCH
    acts = 4 * N_UBATCH * max(info.n_embd, 1) * 8
    scores = 0 if flash_attn else 4 * N_UBATCH * n_ctx * max(info.n_head, 1)
    return 64 * MiB + logits + acts + scores


def _kv(info: ModelInfo, n_ctx: int, tk: str, tv: str, layers: int) -> int:
    per = info.kv_bytes_per_token(CACHE_TYPE_BYTES[tk], CACHE_TYPE_BYTES[tv])
    return per * n_ctx * layers // max(info.n_layer, 1)


def _check_type(name: str) -> str:
    if name not in CACHE_TYPE_BYTES:
        raise LocalsymError(f"unknown cache type {name!r}: one of {', '.join(CACHE_TYPE_BYTES)}")
    return name


def plan_fit(
    info: ModelInfo,
    vram: int,
    ram: int,
    n_ctx: int | None = None,
    type_k: str | None = None,
    type_v: str | None = None,
    n_gpu_layers: int | None = None,
    flash_attn: bool | None = None,
    n_cpu_moe: int | None = None,
    parallel: int = 1,
) -> FitPlan:
    """Choose the settings; n_ctx None = auto hot window, 0 = the model's own context.
    ``parallel``: the context holds that many sessions of n_ctx tokens each (``serve
    --parallel``): the plan's n_ctx is their total, and the auto window is chosen per session
    so that all of them fit (one session's window times four overran the GPU).

    Raise BudgetError when what was asked cannot fit RAM + VRAM.
    """
    ctx_choices = _ctx_choices(info, n_ctx, parallel)
    fa = True if flash_attn is None else flash_attn
    kv_choices = [(type_k, type_v)] if type_k or type_v else [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
    kv_choices = [(_check_type(k or "f16"), _check_type(v or "f16")) for k, v in kv_choices]
    if not fa:
        if type_v not in (None, "f16", "f32", "bf16"):
            raise LocalsymError("a quantized V cache needs flash attention (-fa on)")
        kv_choices = [(k, v) for k, v in kv_choices if v in ("f16", "f32", "bf16")] or [("f16", "f16")]

    # RAM check first: the whole KV cache must fit somewhere.
    min_kv = min(_kv(info, c, k, v, info.n_layer) for c in ctx_choices for k, v in kv_choices)
    if min_kv > ram + vram:
        c = ctx_choices[-1]
        raise BudgetError(
            f"{_ctx_words(c, parallel)} needs {min_kv / GiB:.1f} GiB of KV cache, more than the "
            f"{(ram + vram) / GiB:.1f} GiB of RAM and VRAM available: lower -c"
        )

    if vram <= GPU_RESERVE or n_gpu_layers == 0:
        for c in ctx_choices:
            for k, v in kv_choices:
                kv = _kv(info, c, k, v, info.n_layer)
                if kv + _compute_bytes(info, c, fa) <= ram:
                    return FitPlan(
                        "cpu",
                        vram,
                        0,
                        c,
                        k,
                        v,
                        fa,
                        0,
                        {
                            "cpu_weights": info.weights_bytes,
                            "cpu_kv_cache": kv,
                            "cpu_compute": _compute_bytes(info, c, fa),
                        },
                        ["no usable GPU: everything runs on the CPU"] if vram <= GPU_RESERVE else [],
                    )
        raise BudgetError(f"the KV cache does not fit the {ram / GiB:.1f} GiB RAM budget: lower -c")

    avail = vram - GPU_RESERVE
    layers = sum(info.layer_bytes)
    out_bytes = info.other_bytes // 2  # output head on GPU; token embeddings stay on the CPU
    for c in ctx_choices:
        for k, v in kv_choices:
            kv = _kv(info, c, k, v, info.n_layer)
            comp = _compute_bytes(info, c, fa)
            # 1) everything on the GPU (optionally with the user's n_cpu_moe)
            cpu_moe = n_cpu_moe or 0
            moved = sum(info.expert_bytes[:cpu_moe])
            if n_gpu_layers in (None, -1) or n_gpu_layers > info.n_layer:
                if layers - moved + out_bytes + kv + comp <= avail:
                    return _gpu_plan(info, vram, info.n_layer + 1, c, k, v, fa, cpu_moe, kv, comp, out_bytes)
    # 2) MoE: keep the first N layers' experts on the CPU, everything else on the GPU.
    k, v = kv_choices[0]  # prefer an exact KV cache over keeping more experts on the GPU
    c = ctx_choices[0]
    kv = _kv(info, c, k, v, info.n_layer)
    comp = _compute_bytes(info, c, fa)
    if info.is_moe and n_gpu_layers in (None, -1) and n_cpu_moe is None:
        for n in range(1, info.n_layer + 1):
            if layers - sum(info.expert_bytes[:n]) + out_bytes + kv + comp <= avail:
                return _gpu_plan(info, vram, info.n_layer + 1, c, k, v, fa, n, kv, comp, out_bytes)
    # 3) offload as many whole layers as fit (their KV goes with them).
    per_layer_kv = kv // max(info.n_layer, 1)
    budget = avail - comp
    ngl = 0
    for i in range(info.n_layer):
        cost = info.layer_bytes[i] + per_layer_kv
        if budget < cost:
            break
        budget -= cost
        ngl += 1
    if n_gpu_layers not in (None, -1):
        ngl = min(ngl, n_gpu_layers) if n_gpu_layers <= info.n_layer else ngl
    if ngl == 0:
        return plan_fit(info, 0, ram, n_ctx, type_k, type_v, 0, flash_attn, parallel=parallel)
    gpu_kv = per_layer_kv * ngl
    plan = FitPlan(
        "gpu",
        vram,
        ngl,
        c,
        k,
        v,
        fa,
        0,
        {
            "gpu_weights": sum(info.layer_bytes[:ngl]),
            "gpu_kv_cache": gpu_kv,
            "gpu_compute": comp,
            "gpu_reserve": GPU_RESERVE,
            "cpu_weights": info.weights_bytes - sum(info.layer_bytes[:ngl]),
            "cpu_kv_cache": kv - gpu_kv,
        },
        [f"{info.n_layer - ngl} of {info.n_layer} layers stay on the CPU"],
    )
    return plan


def plan_beside(
    info: ModelInfo,
    placed: FitPlan,
    vram_left: int,
    ram: int,
    n_ctx: int | None = None,
    type_k: str | None = None,
    type_v: str | None = None,
    flash_attn: bool | None = None,
    parallel: int = 1,
) -> FitPlan:
    """A plan for one more context on weights already loaded with ``placed``'s placement
    (its GPU layers and RAM-kept experts are kept: changing them would load a second copy).
    Only this context's KV cache and compute buffer are new: they must fit ``vram_left``
    (what the GPU has beside everything already loaded) and ``ram``.

    The weights appear as ``shared_weights``, outside ``gpu_bytes``; ``parallel`` as in
    ``plan_fit``."""
    ctx_choices = _ctx_choices(info, n_ctx, parallel)
    fa = placed.flash_attn if flash_attn is None else flash_attn
    kv_choices = [(type_k, type_v)] if type_k or type_v else [("f16", "f16"), ("q8_0", "q8_0"), ("q4_0", "q4_0")]
    kv_choices = [(_check_type(k or "f16"), _check_type(v or "f16")) for k, v in kv_choices]
    if not fa:
        if type_v not in (None, "f16", "f32", "bf16"):
            raise LocalsymError("a quantized V cache needs flash attention (-fa on)")
        kv_choices = [(k, v) for k, v in kv_choices if v in ("f16", "f32", "bf16")] or [("f16", "f16")]
    on_gpu = min(placed.n_gpu_layers, info.n_layer) if placed.device == "gpu" else 0
    shared = {k: v for k, v in placed.parts.items() if k.endswith("weights")}
    weights = {"shared_weights": sum(shared.values())}
    for c in ctx_choices:
        for k, v in kv_choices:
            kv = _kv(info, c, k, v, info.n_layer)
            comp = _compute_bytes(info, c, fa)
            gpu_kv = kv * on_gpu // max(info.n_layer, 1)
            if on_gpu:
                if gpu_kv + comp <= vram_left and kv - gpu_kv <= ram:
                    parts = {"gpu_kv_cache": gpu_kv, "gpu_compute": comp, "cpu_kv_cache": kv - gpu_kv, **weights}
                    break
            elif kv + comp <= ram:
                parts = {"cpu_kv_cache": kv, "cpu_compute": comp, **weights}
                break
        else:
            continue
        break
    else:
        where = f"the {vram_left / GiB:.2f} GiB of VRAM left" if on_gpu else f"the {ram / GiB:.1f} GiB of RAM"
        raise BudgetError(
            f"no room for another session's KV cache beside the loaded model in {where}: "
            "lower -c or --max-sessions, or close a session"
        )
    notes = [n for n in placed.notes if not n.startswith("weights shared")]
    notes.append("weights shared with the open sessions on this model: only this context's KV cache is new")
    if (k, v) != ("f16", "f16") and not (type_k or type_v):
        notes.append(f"KV cache quantized to {k}/{v} to fit beside the open sessions")
    return FitPlan(
        placed.device,
        placed.vram_budget,
        placed.n_gpu_layers,
        c,
        k,
        v,
        fa,
        placed.n_cpu_moe,
        parts,
        notes,
        list(placed.cpu_moe_layers) if placed.cpu_moe_layers is not None else None,
    )


def _gpu_plan(info, vram, ngl, c, k, v, fa, cpu_moe, kv, comp, out_bytes) -> FitPlan:
    moved = sum(info.expert_bytes[:cpu_moe])
    notes = []
    if cpu_moe:
        notes.append(f"experts of the first {cpu_moe} of {info.n_layer} layers stay in RAM (--n-cpu-moe {cpu_moe})")
    if k != "f16" or v != "f16":
        notes.append(f"KV cache quantized to {k}/{v} to fit")
    return FitPlan(
        "gpu",
        vram,
        ngl,
        c,
        k,
        v,
        fa,
        cpu_moe,
        {
            "gpu_weights": sum(info.layer_bytes) - moved + out_bytes,
            "gpu_kv_cache": kv,
            "gpu_compute": comp,
            "gpu_reserve": GPU_RESERVE,
            "cpu_weights": info.weights_bytes - (sum(info.layer_bytes) - moved + out_bytes),
            "cpu_kv_cache": 0,
        },
        notes,
    )


def place_experts(plan: FitPlan, info: ModelInfo, usage: np.ndarray) -> None:
    """Keep in RAM the experts of the layers whose learned routing has the smallest working
    sets, instead of llama.cpp's first N (the number stays the plan's)."""
    if not plan.n_cpu_moe or usage.shape != (info.n_layer, info.n_expert):
        return
    placed = advise(usage, info.expert_bytes, plan.n_cpu_moe)
    plan.cpu_moe_layers = placed.cpu_layers
    plan.notes = [n for n in plan.notes if not n.startswith("experts of the first")] + [placed.note()]
