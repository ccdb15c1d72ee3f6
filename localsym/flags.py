"""The flags that `run`, `chat`, `load`, `ask`, `show`, `serve` and `bench` share (llama.cpp's
names), their defaults from the environment and the config file, and where each came from."""

from __future__ import annotations

import argparse
from typing import Any

from localsym import config
from localsym.errors import LocalsymError


def _ngl(value: str) -> int | None:
    try:
        return config.ngl(value)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be auto, all or a layer count (-1 = all), not {value!r}") from None


def add_runtime_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime (llama.cpp flag names; defaults from config.toml [run] or LOCALSYM_*)")
    g.add_argument(
        "-c",
        "--ctx-size",
        type=int,
        default=None,
        dest="n_ctx",
        metavar="N",
        help="hot context size in tokens; 0 = the model's own (default: fitted)",
    )
    g.add_argument(
        "-ngl",
        "--n-gpu-layers",
        "--gpu-layers",
        type=_ngl,
        default=None,
        dest="n_gpu_layers",
        metavar="N|auto|all",
        help="layers on the GPU: auto (fitted to --vram, the default), all (or -1), or a count",
    )
    g.add_argument(
        "-ctk",
        "--cache-type-k",
        default=None,
        dest="type_k",
        metavar="TYPE",
        help="K cache type (f16, q8_0, q4_0, ...)",
    )
    g.add_argument(
        "-ctv",
        "--cache-type-v",
        default=None,
        dest="type_v",
        metavar="TYPE",
        help="V cache type (needs -fa for quantized)",
    )
    g.add_argument(
        "-fa",
        "--flash-attn",
        nargs="?",
        const="on",
        default=None,
        choices=["on", "off", "auto"],
        help="flash attention (default: on)",
    )
    g.add_argument(
        "-t",
        "--threads",
        type=int,
        default=None,
        dest="n_threads",
        metavar="N",
        help="CPU threads (default: all cores)",
    )
    g.add_argument(
        "--n-cpu-moe", type=int, default=None, metavar="N", help="keep the experts of the first N layers on the CPU"
    )
    g.add_argument("--vram", default=None, metavar="SIZE", help="VRAM budget: 8GiB, 16GiB, auto (nvidia-smi) or cpu")


def add_sampling_flags(p: argparse.ArgumentParser, n_predict: bool = True) -> None:
    """llama.cpp's sampling flags; None until ``apply_defaults`` fills what was not given."""
    g = p.add_argument_group("sampling (llama.cpp flag names; defaults from config.toml [run] or LOCALSYM_*)")
    if n_predict:
        g.add_argument(
            "-n",
            "--n-predict",
            type=int,
            default=None,
            metavar="N",
            help="max tokens to generate; -1 = no limit (default 256)",
        )
    g.add_argument(
        "--temp", "--temperature", type=float, default=None, metavar="T", help="temperature; 0 = greedy (default 0)"
    )
    g.add_argument(
        "--top-k", type=int, default=None, metavar="K", help="keep the K likeliest tokens; 0 = off (default 40)"
    )
    g.add_argument(
        "--top-p", type=float, default=None, metavar="P", help="nucleus sampling, 0..1; 1 = off (default 0.95)"
    )
    g.add_argument(
        "--min-p",
        type=float,
        default=None,
        metavar="P",
        help="drop tokens below P x the likeliest, 0..1 (default 0.05)",
    )
    g.add_argument(
        "--repeat-penalty", type=float, default=None, metavar="R", help="penalize repeated tokens; 1 = off (default 1)"
    )
    g.add_argument("--seed", type=int, default=None, metavar="N", help="sampling seed; -1 = random (default -1)")


def _given(a: argparse.Namespace, dest: str) -> bool:
    return getattr(a, dest, None) is not None


def apply_defaults(a: argparse.Namespace, session_model: bool = False) -> dict[str, str]:
    """Fill every run flag the user did not give, from the environment, then the config
    file, then the default; returns where each came from (config key -> flag, env,
    session, config file, default). ``session_model``: the session named on the command line
    exists, so its stored model stands over the environment and the file."""
    env = config.env_run()
    file = config.load().get("run", {})
    sources = {}
    for key, (_, _, dest) in config.RUN.items():
        if not hasattr(a, dest):
            continue  # this command has no such flag
        if _given(a, dest):
            sources[key] = "flag"
            continue
        if key == "model" and session_model:
            sources[key] = "session"
            continue
        for origin, layer in (("env", env), ("config file", file)):
            if key in layer:
                value = layer[key]
                if key == "flash_attn":
                    value = config.flash(value)
                setattr(a, dest, value)
                sources[key] = origin
                break
        else:
            if config.RUN_DEFAULTS[key] is not None:
                setattr(a, dest, config.RUN_DEFAULTS[key])
            sources[key] = "default"
    return sources


def run_options(a: argparse.Namespace):
    """RunOptions from the runtime flags (benchmarks share them)."""
    from localsym.session import RunOptions, check_ctx, check_threads

    check_ctx(a.n_ctx)  # refuses what no context can be; a small one is raised where it is made (ctx_note)
    check_threads(a.n_threads)
    if a.n_cpu_moe is not None and a.n_cpu_moe < 0:
        raise LocalsymError(f"--n-cpu-moe must be 0 or more, not {a.n_cpu_moe}")
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


def _check(name: str, value: Any, conv_key: str) -> Any:
    conv, what, _ = config.RUN[conv_key]
    try:
        return conv(value)
    except (TypeError, ValueError, OverflowError):
        raise LocalsymError(f"{name} must be {what}, not {value}") from None


def gen_params(a: argparse.Namespace):
    """GenParams from the sampling flags, each checked (``-n -1``: no limit but the context;
    ``--seed -1``: a random seed)."""
    from localsym.session import GenParams

    n = _check("-n", a.n_predict if a.n_predict is not None else config.RUN_DEFAULTS["n_predict"], "n_predict")

    def pick(dest: str) -> Any:
        v = getattr(a, dest, None)
        return config.RUN_DEFAULTS[dest] if v is None else v

    kwargs: dict[str, Any] = {
        "max_tokens": 1 << 30 if n == -1 else n,
        "temp": _check("--temp", pick("temp"), "temp"),
        "top_k": _check("--top-k", pick("top_k"), "top_k"),
        "top_p": _check("--top-p", pick("top_p"), "top_p"),
        "min_p": _check("--min-p", pick("min_p"), "min_p"),
    }
    seed = _check("--seed", pick("seed"), "seed")
    kwargs["seed"] = 0xFFFFFFFF if seed == -1 else seed & 0xFFFFFFFF
    kwargs["repeat_penalty"] = _check("--repeat-penalty", pick("repeat_penalty"), "repeat_penalty")
    return GenParams(**kwargs)


def ctx_note(a: argparse.Namespace, used: int | None) -> None:
    """Note (for ``main`` to print once the command succeeded: a failure stays one line) that
    the user's ``-c`` was raised to ``used``: a context smaller than llama.cpp's 256 cells, or
    than a session needs, would abort or fail later."""
    from localsym.session import raised_note

    note = raised_note(getattr(a, "n_ctx", None), used)
    if note:
        a.ctx_note = note
