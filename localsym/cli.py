"""The `localsym` command: parses, calls the core, prints. No logic of its own."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence

from localsym.errors import LocalsymError
from localsym.flags import add_runtime_flags, gen_params, run_options
from localsym.progress import human_bytes


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"localsym: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


_human = human_bytes


def _progress_printer():
    """A progress callback drawing a rich bar on stderr; returns (callback, stop)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        transient=False,
        console=Console(stderr=True),
    )
    tasks: dict[str, TaskID] = {}

    def update(done: int, total: int, what: str) -> None:
        if what not in tasks:
            if not tasks:
                bar.start()
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done)

    return update, bar.stop


def cmd_pull(a: argparse.Namespace) -> int:
    from localsym.session import models as model_store

    update, stop = _progress_printer() if sys.stderr.isatty() and not a.quiet else (None, lambda: None)
    try:
        m = model_store.pull(a.model, update)
    finally:
        stop()
    in_place = ", in place" if m.source not in ("catalog", "local") else ""
    print(f"{m.name}: {m.path} ({_human(m.size)}, sha256 {m.sha256[:12]}, {m.source}{in_place})")
    return 0


def cmd_list(a: argparse.Namespace) -> int:
    from localsym.session import models as model_store

    models, problems = model_store.list_all() if a.all else (model_store.list_models(), [])
    if a.json:
        rows = [
            {"name": m.name, "path": str(m.path), "size": m.size, "sha256": m.sha256, "source": m.source}
            | ({"registered": m.registered} if a.all else {})
            for m in models
        ]
        out: object = rows
        if a.all:  # an object, so that problems never pass for models in a reader's loop
            out = {
                "models": rows,
                "problems": [{"path": str(p.path), "problem": p.problem, "source": p.source} for p in problems],
            }
        print(json.dumps(out))
        return 0
    for p in problems:
        sys.stderr.write(f"localsym: {p.source}: {p.path}: {p.problem}\n")
    if not models:
        print(
            "no models yet: `localsym pull smollm2-135m`"
            + ("" if a.all else " (`localsym list --all` shows those of Ollama, LM Studio, Hugging Face)")
        )
        return 0
    width = max([24, *(len(m.name) for m in models)])
    print(f"{'NAME':<{width}} {'SIZE':>10}  {'SHA256':<12}  {'SOURCE':<9} PATH")
    for m in models:
        print(f"{m.name:<{width}} {_human(m.size):>10}  {m.sha256[:12] or '-':<12}  {m.source:<9} {m.path}")
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from localsym.session import describe_model

    d = describe_model(a.model, run_options(a))
    plan = d["plan"]
    if a.json:
        print(json.dumps({k: v for k, v in d.items() if not k.startswith("plan_")}))
        return 0
    rows = [
        ("file", d["path"]),
        ("architecture", d["architecture"]),
        ("parameters", f"{d['n_params'] / 1e9:.2f}B" if d["n_params"] >= 1e9 else f"{d['n_params'] / 1e6:.0f}M"),
        ("quantization", d["file_type"]),
        ("size", _human(d["file_size"])),
        ("native context", str(d["n_ctx_train"])),
        ("layers", str(d["n_layer"])),
        ("embedding", str(d["n_embd"])),
        ("heads (q/kv)", f"{d['n_head']}/{d['n_head_kv']}, head size {d['head_dim_k']}"),
        ("KV bytes per token", f"{d['kv_bytes_per_token']} (f16)"),
        ("sliding window", str(d["sliding_window"]) if d["sliding_window"] else "none"),
        ("experts (total/used)", f"{d['n_expert']}/{d['n_expert_used']}" if d["n_expert"] else "none (dense)"),
        ("chat template", "yes" if d["chat_template"] else "no (base model: completion form)"),
    ]
    for k, v in rows:
        print(f"{k:<22}{v}")
    budget = d["plan_vram_budget"]
    print(f"\nfit plan ({'VRAM ' + _human(budget) if budget else 'CPU only'}):")
    print(
        f"  {'-ngl':<20}{plan['n_gpu_layers']}\n  {'-c':<20}{plan['n_ctx']}\n"
        f"  {'-ctk/-ctv':<20}{plan['type_k']}/{plan['type_v']}"
    )
    cpu_layers = plan.get("cpu_moe_layers") or []
    print(
        f"  {'-fa':<20}{'on' if plan['flash_attn'] else 'off'}\n  {'--n-cpu-moe':<20}{plan['n_cpu_moe']}"
        + (f" (layers {', '.join(map(str, cpu_layers))})" if cpu_layers else "")
    )
    for part, n in d["plan_parts"].items():
        print(f"  {part:<20}{_human(n):>10}")
    if budget:
        print(f"  {'gpu total':<20}{_human(d['plan_gpu_bytes']):>10}")
    for note in d["plan_notes"]:
        print(f"  note: {note}")
    ol = d.get("ollama")
    if ol:
        print("\nollama:")
        if ol["system"]:
            print(f"  {'system prompt':<20}{ol['system'][:80]!r} (the default system prompt here)")
        if ol["stop"]:
            print(f"  {'stop words':<20}{', '.join(map(repr, ol['stop']))} (used as stop strings)")
        if ol["note"]:
            print(f"  note: {ol['note']}")
    return 0


def cmd_rm(a: argparse.Namespace) -> int:
    from localsym.session import remove_model

    for name in a.model:
        m, freed = remove_model(name)
        kept = " (file kept: it is yours)" if m.source not in ("catalog",) else ""
        print(f"removed {m.name}{kept}" + (f"; freed {_human(freed)} of its blocks" if freed else ""))
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from localsym.session import prune_blocks

    files, freed = prune_blocks()
    print(f"removed {files} blocks no session uses ({_human(freed)})")
    return 0


def cmd_run(a: argparse.Namespace) -> int:
    from localsym.session import OneShot

    prompt = a.prompt if a.prompt is not None else (sys.stdin.read() if not sys.stdin.isatty() else None)
    if not prompt:
        raise LocalsymError("no prompt: give one as an argument or on standard input")
    params = gen_params(a)
    with OneShot(a.model, prompt, run_options(a), params, a.system, a.raw) as run:
        text = []
        for piece in run:
            text.append(piece)
            if not a.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        stats = run.stats
    if a.json:
        print(
            json.dumps(
                {
                    "text": "".join(text),
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "prefill_tok_s": round(stats.prefill_tok_s, 2),
                    "decode_tok_s": round(stats.decode_tok_s, 2),
                }
            )
        )
    else:
        sys.stdout.write("\n")
    return 0


def _add_session_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--session", "-s", required=True, help="session name")
    p.add_argument("--model", "-m", default=None, help="model (a new session's; default: the catalog default)")
    p.add_argument("--warm-mb", type=float, default=None, help="RAM for the warm tier (MiB)")
    p.add_argument("--cold-gb", type=float, default=None, help="disk for the cold tier (GiB)")
    p.add_argument("--block-tokens", type=int, default=None, help="tokens per block (a new session's)")
    p.add_argument(
        "--kv-format",
        default=None,
        choices=["adaptive", "f16", "q8", "q4", "q3", "q2"],
        help="how sealed blocks keep their KV (default: adaptive, chosen per block and layer)",
    )
    add_runtime_flags(p)


def _open_session(a: argparse.Namespace):
    from localsym.session import Session

    overrides = {
        k: v
        for k, v in (
            ("warm_mb", a.warm_mb),
            ("cold_gb", a.cold_gb),
            ("block_tokens", a.block_tokens),
            ("kv_format", a.kv_format),
        )
        if v is not None
    }
    return Session.open(a.session, a.model, run_options(a), overrides=overrides)


def cmd_load(a: argparse.Namespace) -> int:
    import time

    with _open_session(a) as sess:
        t0 = time.perf_counter()
        bar = None
        if sys.stderr.isatty() and not a.quiet:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed} tok"),
                TextColumn("{task.fields[rate]:.0f} tok/s"),
                TimeRemainingColumn(),
                transient=True,
                console=Console(stderr=True),
            )
            task = bar.add_task("load", total=None, rate=0.0)
            bar.start()

        def progress(done: int, total: int, source: str) -> None:
            if bar is not None:
                rate = done / max(time.perf_counter() - t0, 1e-6)
                bar.update(
                    task, completed=done, total=max(total, done), rate=rate, description=os.path.basename(source)[:30]
                )

        try:
            rep = sess.load(a.path, progress)
        finally:
            if bar is not None:
                bar.stop()
        total_tokens = sess.total_tokens
        mix = sess.quant_mix()
    if a.json:
        print(
            json.dumps(
                {
                    "files": rep.files,
                    "tokens": rep.tokens,
                    "blocks": rep.blocks,
                    "computed_blocks": rep.computed_blocks,
                    "reused_blocks": rep.reused_blocks,
                    "seconds": round(rep.seconds, 3),
                    "skipped": [{"path": p, "reason": r} for p, r in rep.skipped],
                    "session_tokens": total_tokens,
                    "formats": mix,
                }
            )
        )
        return 0
    rate = rep.tokens / rep.seconds if rep.seconds else 0
    print(
        f"loaded {rep.files} files: {rep.tokens} new tokens in {rep.blocks} blocks "
        f"({rep.computed_blocks} computed, {rep.reused_blocks} reused) in {rep.seconds:.1f}s ({rate:.0f} tok/s); "
        f"session now {total_tokens} tokens"
    )
    from localsym.session import mix_summary

    print(f"  block formats (layers): {mix_summary(mix['cold'])}; {mix['pinned_blocks']} blocks pinned at q8")
    for p, why in rep.skipped:
        print(f"  skipped {p}: {why}")
    return 0


def cmd_ask(a: argparse.Namespace) -> int:
    with _open_session(a) as sess:
        params = gen_params(a)
        with sess.ask(a.question, params) as turn:
            for piece in turn:
                if not a.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        stats = turn.stats
    if a.json:
        d = stats.as_dict()
        print(
            json.dumps(
                {
                    k: d[k]
                    for k in (
                        "answer",
                        "total_tokens",
                        "hot_tokens",
                        "blocks_total",
                        "blocks_in_working_set",
                        "restored_blocks",
                        "recomputed_blocks",
                        "reinjected_blocks",
                        "ttft_s",
                    )
                }
            )
        )
    else:
        sys.stdout.write("\n")
    return 0


def cmd_sessions(a: argparse.Namespace) -> int:
    from localsym.session import list_sessions

    rows = list_sessions()
    if a.json:
        print(json.dumps(rows))
    elif not rows:
        print("no sessions yet: `localsym load PATH --session NAME`")
    else:
        for r in rows:
            print(f"{r['name']:<24} {r['model'] or '?':<20} {r['tokens']:>10} tokens")
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    from localsym.tui import ChatApp

    overrides = {k: v for k, v in (("warm_mb", a.warm_mb), ("cold_gb", a.cold_gb)) if v is not None}
    ChatApp(a.model, a.session, run_options(a), overrides=overrides).run()
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from localsym.server import serve
    from localsym.server.settings import ServerSettings, resolve_roots
    from localsym.session import default_model

    serve(
        ServerSettings(
            model=a.model or default_model(),
            opts=run_options(a),
            host=a.host,
            port=a.port,
            allow_roots=resolve_roots(a.allow_root),
            max_sessions=a.max_sessions,
            queue=a.queue,
            api_key=a.api_key or os.environ.get("LOCALSYM_API_KEY") or None,
        )
    )
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from localsym import bench

    return bench.main(a)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="localsym", description="A local, offline LLM runtime with unbounded memory.")
    p.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("pull", help="fetch a catalog model, or register a GGUF you have, in place")
    s.add_argument(
        "model",
        help="catalog name (smollm2-135m, gemma3-270m), ./file.gguf, or another tool's model: "
        "ollama:NAME:TAG, lmstudio:OWNER/REPO, hf:OWNER/REPO/FILE.gguf, llamacpp:FILE.gguf",
    )
    s.add_argument("-q", "--quiet", action="store_true")
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("list", aliases=["ls"], help="models on this machine")
    s.add_argument(
        "--all",
        "-a",
        action="store_true",
        help="also the GGUFs of Ollama, LM Studio, the Hugging Face cache and llama.cpp's cache",
    )
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="a model's shape and its fit plan")
    s.add_argument("model")
    s.add_argument("--json", action="store_true")
    add_runtime_flags(s)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("rm", help="remove models, their block caches and learned routing")
    s.add_argument("model", nargs="+")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("prune", help="delete cached blocks that no session uses")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser("run", help="answer one prompt, streaming to stdout")
    s.add_argument("model")
    s.add_argument("prompt", nargs="?")
    s.add_argument("--json", action="store_true", help="print one JSON object at the end")
    s.add_argument("--system", default=None, help="system prompt")
    s.add_argument("--raw", action="store_true", help="no chat template: plain completion")
    s.add_argument("-n", "--n-predict", type=int, default=256, help="max tokens to generate (-1: no limit)")
    s.add_argument("--temp", type=float, default=0.0, help="temperature (0 = greedy)")
    s.add_argument("--seed", type=int, default=0xFFFFFFFF)
    add_runtime_flags(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("load", help="ingest a file or a tree into a session")
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.add_argument("-q", "--quiet", action="store_true")
    _add_session_flags(s)
    s.set_defaults(func=cmd_load)

    s = sub.add_parser("ask", help="ask a session a question (streams the answer)")
    s.add_argument("question")
    s.add_argument("--json", action="store_true")
    s.add_argument("-n", "--n-predict", type=int, default=256)
    s.add_argument("--temp", type=float, default=0.0)
    s.add_argument("--seed", type=int, default=0xFFFFFFFF)
    _add_session_flags(s)
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("chat", help="the terminal chat (Textual)")
    s.add_argument("model", nargs="?", default=None, help="model (default: the session's, else smollm2-135m)")
    s.add_argument("--session", "-s", default="default")
    s.add_argument("--warm-mb", type=float, default=None)
    s.add_argument("--cold-gb", type=float, default=None)
    add_runtime_flags(s)
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("sessions", help="list sessions")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sessions)

    s = sub.add_parser("serve", help="OpenAI- and Ollama-compatible HTTP server over sessions")
    s.add_argument("--model", "-m", default=None, help="the model every session runs (default: the catalog default)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (any but localhost needs --api-key)")
    s.add_argument("--port", type=int, default=11435)
    s.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory /localsym/load may read (repeatable; none: loading is off)",
    )
    s.add_argument("--api-key", default=None, help="require this key (Bearer or x-api-key; default $LOCALSYM_API_KEY)")
    s.add_argument("--max-sessions", type=int, default=4, help="sessions open at once (each its own llama.cpp context)")
    s.add_argument("--queue", type=int, default=8, help="requests that may wait for a session before a 503")
    add_runtime_flags(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("bench", help="benchmarks (JSON + a table)")
    from localsym.bench import add_parsers

    add_parsers(s, add_runtime_flags)
    s.set_defaults(func=cmd_bench)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    if not args.verbose:
        logging.getLogger("localsym.llama").setLevel(logging.ERROR + 10)
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        # llama.cpp polls an abort callback written in Python: raising there only prints
        # "Exception ignored", so the first Ctrl+C asks every decode to stop and the
        # command unwinds through its own cleanup; a second one interrupts at once
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        from localsym.session import cancel_all

        cancel_all()

    if args.command not in ("chat", "serve"):  # Textual and uvicorn handle their own keys
        signal.signal(signal.SIGINT, on_sigint)
    try:
        rc = args.func(args)
        if interrupted.is_set():
            raise KeyboardInterrupt
        return rc
    except LocalsymError as e:
        if interrupted.is_set():
            return _interrupted()
        sys.stderr.write(f"localsym: error: {e}\n")
        return 1
    except KeyboardInterrupt:
        return _interrupted()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from localsym.session import Cancelled

        if isinstance(e, Cancelled):
            return _interrupted()
        raise


def _interrupted() -> int:
    sys.stderr.write("\nlocalsym: interrupted\n" if sys.stdout.isatty() else "localsym: interrupted\n")
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
