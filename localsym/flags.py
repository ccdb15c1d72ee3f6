"""The runtime flags (llama.cpp's names) that `run`, `chat`, `load`, `ask` and `bench` share."""

from __future__ import annotations

import argparse

from localsym.errors import LocalsymError


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime (llama.cpp flag names)")
    g.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=None,
        dest="n_ctx",
        help="hot context size in tokens; 0 = the model's own (default: fitted)",
    )
    g.add_argument(
        "-ngl",
        "--n-gpu-layers",
        "--gpu-layers",
        type=int,
        default=None,
        dest="n_gpu_layers",
        help="layers on the GPU (-1 = all; default: fitted to --vram)",
    )
    g.add_argument("-ctk", "--cache-type-k", default=None, dest="type_k", help="K cache type (f16, q8_0, q4_0, ...)")
    g.add_argument("-ctv", "--cache-type-v", default=None, dest="type_v", help="V cache type (needs -fa for quantized)")
    g.add_argument(
        "-fa",
        "--flash-attn",
        nargs="?",
        const="on",
        default=None,
        choices=["on", "off", "auto"],
        help="flash attention (default: on)",
    )
    g.add_argument("-t", "--threads", type=int, default=None, dest="n_threads", help="CPU threads")
    g.add_argument("--n-cpu-moe", type=int, default=None, help="keep the experts of the first N layers on the CPU")
    g.add_argument("--vram", default=None, help="VRAM budget: 8GiB, 16GiB, auto (nvidia-smi) or cpu")


def run_options(a: argparse.Namespace):
    """RunOptions from the runtime flags (benchmarks share them)."""
    from localsym.session import RunOptions

    if a.n_ctx is not None and a.n_ctx < 0:
        raise LocalsymError("-c must be 0 (the model's own context) or a positive token count")
    if a.n_threads is not None and a.n_threads < 1:
        raise LocalsymError(f"--threads must be at least 1, not {a.n_threads}")
    fa = None if a.flash_attn in (None, "auto") else a.flash_attn == "on"
    return RunOptions(
        n_ctx=a.n_ctx,
        n_gpu_layers=a.n_gpu_layers,
        type_k=a.type_k,
        type_v=a.type_v,
        flash_attn=fa,
        n_threads=a.n_threads,
        n_cpu_moe=a.n_cpu_moe,
        vram=a.vram,
    )


def gen_params(a: argparse.Namespace):
    """GenParams from `-n`, `--temp` and `--seed`, checked (``-n -1``: no limit but the context)."""
    import math

    from localsym.session import GenParams

    if a.n_predict == -1:
        n = 1 << 30
    elif a.n_predict < 1:
        raise LocalsymError(f"-n must be -1 (no limit) or at least 1, not {a.n_predict}")
    else:
        n = a.n_predict
    if not math.isfinite(a.temp) or a.temp < 0:
        raise LocalsymError(f"--temp must be a number >= 0, not {a.temp}")
    return GenParams(max_tokens=n, temp=a.temp, seed=a.seed & 0xFFFFFFFF)
