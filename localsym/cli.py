"""The `localsym` command: parses, calls the core, prints. No logic of its own.

With ``--json`` a command prints one JSON document on stdout, and an error prints
``{"error": "..."}`` on stdout too (so a script reading stdout sees it), with the same
non-zero exit as without: 1 for an error, 2 for a usage mistake, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from localsym.errors import LocalsymError
from localsym.flags import add_runtime_flags, add_sampling_flags, apply_defaults, ctx_note, gen_params, run_options
from localsym.progress import human_bytes

_JSON_ERRORS = False  # --json was on the command line: errors are JSON on stdout


def _fail(message: str) -> None:
    """One error line: ``localsym: error: ...`` on stderr, or ``{"error": ...}`` on stdout."""
    if _JSON_ERRORS:
        sys.stdout.write(json.dumps({"error": message}) + "\n")
        sys.stdout.flush()
    else:
        sys.stderr.write(f"localsym: error: {message}\n")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (see ``_fail``) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        _fail(f"{message} (see `{self.prog} --help`)")
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

    quiet = a.quiet or a.json or not sys.stderr.isatty()
    update, stop = _progress_printer() if not quiet else (None, lambda: None)
    try:
        m = model_store.pull(a.model, update)
    finally:
        stop()
    if a.json:
        print(json.dumps({"name": m.name, "path": str(m.path), "size": m.size, "sha256": m.sha256, "source": m.source}))
        return 0
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


def _show_part(a: argparse.Namespace, part: str) -> int:
    """`show --template/--license/--system/--parameters`: just that part, as Ollama prints it."""
    from localsym import config
    from localsym.session import model_card

    card = model_card(a.model)
    if part == "parameters":
        # what `run` samples with for this model: the config's and environment's run
        # settings over the defaults, in Ollama's names; Ollama's stop words when it has them
        run = {**config.RUN_DEFAULTS, **config.load().get("run", {}), **config.env_run()}
        value: Any = {
            "num_ctx": run["ctx_size"] if run["ctx_size"] is not None else "auto",
            "num_predict": run["n_predict"],
            "temperature": run["temp"],
            "top_k": run["top_k"],
            "top_p": run["top_p"],
            "min_p": run["min_p"],
            "repeat_penalty": run["repeat_penalty"],
            "seed": run["seed"],
        } | ({"stop": card["stop"]} if card["stop"] else {})
    else:
        value = card[part]
    if a.json:
        out = {part: value}
        if part == "license":
            out["license_source"] = card["license_source"]
        print(json.dumps(out))
        return 0
    if part == "parameters":
        for k, v in value.items():
            for one in v if isinstance(v, list) else [v]:
                print(f"{k:<30} {json.dumps(one) if isinstance(one, str) and k == 'stop' else one}")
        return 0
    if value is None:
        what = {
            "template": "no chat template (a base model: `run` uses completion form)",
            "license": "no license recorded in the file",
            "system": "no system prompt of its own",
        }[part]
        sys.stderr.write(f"localsym: {a.model}: {what}\n")
        return 0
    print(value)
    return 0


def cmd_show(a: argparse.Namespace) -> int:
    from localsym.session import describe_model

    for part in ("template", "parameters", "license", "system"):
        if getattr(a, f"part_{part}"):
            return _show_part(a, part)
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

    rows = []
    for name in a.model:
        m, freed, broken = remove_model(name, force=a.force)
        rows.append({"name": m.name, "file_kept": m.source != "catalog", "freed_bytes": freed})
        if broken:
            rows[-1]["open_sessions"] = [{"name": u["name"], "pid": u["pid"]} for u in broken]
        if not a.json:
            kept = " (file kept: it is yours)" if m.source not in ("catalog",) else ""
            print(f"removed {m.name}{kept}" + (f"; freed {_human(freed)} of its blocks" if freed else ""))
            for u in broken:  # --force: what it broke
                sys.stderr.write(
                    f"localsym: warning: session {u['name']!r} (pid {u['pid']}) had {m.name} open: its cached "
                    "blocks were deleted under it, and it cannot reopen until the model is pulled again\n"
                )
    if a.json:
        print(json.dumps(rows))
    return 0


def cmd_prune(a: argparse.Namespace) -> int:
    from localsym.session import prune_blocks

    files, freed = prune_blocks()
    if a.json:
        print(json.dumps({"blocks": files, "freed_bytes": freed}))
    else:
        print(f"removed {files} blocks no session uses ({_human(freed)})")
    return 0


def _read_stdin() -> str:
    """Standard input as text: bytes that are not UTF-8 (a binary file piped in) become
    U+FFFD, with a note, rather than a traceback."""
    data = sys.stdin.buffer.read()
    text = data.decode("utf-8", errors="replace")
    if "\ufffd" in text and b"\xef\xbf\xbd" not in data:
        sys.stderr.write("localsym: note: standard input is not UTF-8 text; its undecodable bytes were replaced\n")
    return text


def _ensure_pulled(model: str, quiet: bool) -> None:
    """`run` and `chat` on a catalog model not pulled yet pull it first, as Ollama does."""
    from localsym.errors import ModelNotFound
    from localsym.session import load_catalog
    from localsym.session import models as model_store

    try:
        model_store.resolve(model)
        return
    except ModelNotFound:
        if model not in load_catalog():
            raise
    show = not quiet and sys.stderr.isatty()
    if show:
        sys.stderr.write(f"localsym: pulling {model} (first run)...\n")
    update, stop = _progress_printer() if show else (None, lambda: None)
    try:
        model_store.pull(model, update)
    except LocalsymError as e:
        raise LocalsymError(f"{model} is not pulled yet and could not be: {e}") from None
    finally:
        stop()


def _chat_session_name(model: str) -> str:
    """The session `run MODEL` chats in: one per model, named after it."""
    import re

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", os.path.basename(model.rstrip("/\\")).removesuffix(".gguf"))
    name = name.lstrip("._-")[:64] or "default"
    return name


def _open_chat(a: argparse.Namespace, model: str | None, session: str, overrides: dict[str, Any]) -> int:
    from localsym.session import connect
    from localsym.tui import ChatApp

    opts = run_options(a)
    sessions = connect(model, session, a.no_server)  # a running `serve` of this model, else this process
    if model is not None and not sessions.remote:
        _ensure_pulled(model, quiet=False)
    app = ChatApp(model, session, opts, overrides=overrides, sessions=sessions)
    if hasattr(a, "temp") and hasattr(app, "params"):
        # the sampling flags (and -n) for every answer; the chat's /set changes them later.
        # Unless -n is set somewhere, the chat keeps its own (longer) answer length.
        params = gen_params(a)
        if getattr(a, "sources", {}).get("n_predict", "default") == "default":
            params.max_tokens = app.params.max_tokens
        app.params = params
    app.run()
    return 0


def _print_timings(load_s: float, total_s: float, prompt_tokens: int, prefill_s: float, n: int, decode_s: float):
    """`--verbose`: Ollama's timing lines, on stderr."""
    rows = [
        ("total duration", f"{total_s:.3f}s"),
        ("load duration", f"{load_s:.3f}s"),
        ("prompt eval count", f"{prompt_tokens} token(s)"),
        ("prompt eval duration", f"{prefill_s:.3f}s"),
        ("prompt eval rate", f"{prompt_tokens / prefill_s:.2f} tokens/s" if prefill_s > 0 else "-"),
        ("eval count", f"{n} token(s)"),
        ("eval duration", f"{decode_s:.3f}s"),
        ("eval rate", f"{max(n - 1, 0) / decode_s:.2f} tokens/s" if decode_s > 0 else "-"),
    ]
    sys.stderr.write("".join(f"{k + ':':<22}{v}\n" for k, v in rows))


# the runtime flags a running server was started with its own of
RUNTIME_FLAGS = {
    "ctx_size": "-c",
    "n_gpu_layers": "-ngl",
    "vram": "--vram",
    "threads": "-t",
    "cache_type_k": "-ctk",
    "cache_type_v": "-ctv",
    "flash_attn": "-fa",
    "n_cpu_moe": "--n-cpu-moe",
}


def cmd_run(a: argparse.Namespace) -> int:
    import contextlib

    from localsym import running
    from localsym.session import MIN_CTX, TurnStats, connect, gen_stats

    prompt = a.prompt
    if prompt is None and not sys.stdin.isatty():
        prompt = _read_stdin()
    if prompt is None:
        if a.json or not sys.stdout.isatty():
            raise LocalsymError("no prompt: give one as an argument or on standard input")
        # `run MODEL` at a terminal opens the chat on that model, as Ollama does
        return _open_chat(a, a.model, a.session or _chat_session_name(a.model), {})
    if not prompt.strip():
        raise LocalsymError("no prompt: give one as an argument or on standard input")
    params = gen_params(a)
    opts = run_options(a)
    sessions = connect(a.model, a.session, a.no_server)  # a running `serve` of this model, else this process
    for line in sessions.notes:
        sys.stderr.write(f"localsym: note: {line}\n")
    if sessions.remote:
        given = [
            RUNTIME_FLAGS[k] for k, src in getattr(a, "sources", {}).items() if k in RUNTIME_FLAGS and src == "flag"
        ]
        if given:
            sys.stderr.write(
                f"localsym: note: {sessions.where} runs the model with its own {', '.join(given)} "
                "(--no-server runs it here with yours)\n"
            )
    else:
        _ensure_pulled(a.model, quiet=a.json)
    t0 = time.perf_counter()
    warnings: list[str] = []
    with running.registered("run", model=a.model), contextlib.ExitStack() as stack:
        if a.session:  # the answer joins the session's memory (the server's, when attached)
            overrides = {"system": a.system} if a.system else None
            sess, notes = sessions.open(a.session, a.model, opts, overrides)
            stack.enter_context(sess)
            if notes:
                a.ctx_note = notes[0]
            run: Any = stack.enter_context(sess.ask(prompt, params, a.raw))
        else:
            if not sessions.remote:
                ctx_note(a, MIN_CTX)  # -c 1: llama.cpp makes 256 cells whatever it is asked
            run = stack.enter_context(sessions.oneshot(a.model, prompt, opts, params, a.system, a.raw))
        load_s = time.perf_counter() - t0
        text = []
        for piece in run:
            text.append(piece)
            if not a.json:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if isinstance(run.stats, TurnStats):
            warnings = run.stats.warnings
            stats = gen_stats(run.stats)
        else:
            stats = run.stats
    total_s = time.perf_counter() - t0
    if a.json:
        print(
            json.dumps(
                {
                    "text": "".join(text),
                    "prompt_tokens": stats.prompt_tokens,
                    "completion_tokens": stats.completion_tokens,
                    "prefill_tok_s": round(stats.prefill_tok_s, 2),
                    "decode_tok_s": round(stats.decode_tok_s, 2),
                    "stop_reason": stats.stop_reason,
                }
            )
        )
    else:
        sys.stdout.write("\n")
    sys.stdout.flush()
    for line in warnings:
        sys.stderr.write(f"localsym: warning: {line}\n")
    if a.verbose:
        _print_timings(load_s, total_s, stats.prompt_tokens, stats.prefill_s, stats.completion_tokens, stats.decode_s)
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
    sess = Session.open(a.session, a.model, run_options(a), overrides=overrides)
    ctx_note(a, sess.engine.opts.n_ctx)
    return sess


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
                TextColumn("{task.completed} {task.fields[unit]}"),
                TextColumn("{task.fields[rate]:.0f} {task.fields[unit]}/s"),
                TimeRemainingColumn(),
                transient=True,
                console=Console(stderr=True),
            )
            task = bar.add_task("load", total=None, rate=0.0, unit="tok")
            bar.start()
        pages_t0: dict[str, float] = {}

        def progress(done: int, total: int, source: str) -> None:
            if bar is not None:
                rate = done / max(time.perf_counter() - t0, 1e-6)
                bar.update(
                    task,
                    completed=done,
                    total=max(total, done),
                    rate=rate,
                    unit="tok",
                    description=os.path.basename(source)[:30],
                )

        def reading(done: int, total: int, name: str) -> None:  # a document's pages, before its tokens
            if bar is not None:
                start = pages_t0.setdefault(name, time.perf_counter())
                rate = done / max(time.perf_counter() - start, 1e-6)
                label = f"reading {os.path.basename(name)}"[:30]
                bar.update(task, completed=done, total=max(total, done), rate=rate, unit="pages", description=label)

        try:
            rep = sess.load(a.path, progress, no_ignore=a.no_ignore, reading=reading)
        finally:
            if bar is not None:
                bar.stop()
            last = getattr(sess, "last_load", None)  # a session served by `localsym serve` has none
            kept = last.partial if last is not None else []
            for source, n in kept:  # stopped part-way through a streamed document
                sys.stderr.write(f"localsym: {source}: {n} blocks kept; `localsym load` it again to go on\n")
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
                    "ignored": [{"ignore_file": p, "excluded": n} for p, n in rep.ignored],
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
    for line in ignored_lines(rep.ignored):
        print(f"  {line}")
    return 0


def ignored_lines(ignored: list[tuple[str, int]]) -> list[str]:
    """What ignore files kept out, and how to load it anyway."""
    out = [f"{n} file{'s' if n != 1 else ''} excluded by {p}" for p, n in ignored]
    return [*out, "(load --no-ignore loads them too)"] if out else []


def cmd_ask(a: argparse.Namespace) -> int:
    from localsym.session import source_label

    params = gen_params(a)
    t0 = time.perf_counter()
    with _open_session(a) as sess:
        load_s = time.perf_counter() - t0
        with sess.ask(a.question, params) as turn:
            for piece in turn:
                if not a.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        stats = turn.stats
    total_s = time.perf_counter() - t0
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
                # the document blocks that served the answer: path, line range, score, restored/reinjected
                | {"sources": d.get("sources", [])}
                # the working set chosen again while answering: at which token, why, the blocks brought in
                | {"refreshes": d.get("refreshes", [])}
                # damage met: blocks left out (stored tokens damaged) or rebuilt (stored KV damaged)
                | {"warnings": d.get("warnings", [])}
            )
        )
    else:
        sys.stdout.write("\n")
    sys.stdout.flush()
    for line in stats.warnings:  # also with --json: said where a user looks
        sys.stderr.write(f"localsym: warning: {line}\n")
    if a.verbose:
        sys.stdout.flush()
        n = stats.completion_tokens
        decode_s = max(n - 1, 0) / stats.decode_tok_s if stats.decode_tok_s > 0 else 0.0
        _print_timings(load_s, total_s, stats.prompt_tokens, stats.ttft_s, n, decode_s)
        sys.stderr.write(
            f"{'session:':<22}{stats.total_tokens} tokens, {stats.blocks_in_working_set} of {stats.blocks_total} "
            f"blocks in the working set ({stats.restored_blocks} restored, {stats.recomputed_blocks} recomputed, "
            f"{stats.reinjected_blocks} re-injected)\n"
        )
        for src in stats.sources:
            how = f"score {src.get('score', 0):.2f}, {src.get('how', '?')}"
            sys.stderr.write(f"{'source:':<22}{source_label(src)} ({how})\n")
        for r in getattr(stats, "refreshes", []):
            brought = ", ".join(source_label(b) for b in r["blocks"])
            sys.stderr.write(f"{'refresh:':<22}at answer token {r['at']} ({', '.join(r['words'])}): {brought}\n")
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
            problem = f"  ({r['problem']})" if r.get("problem") else ""
            print(f"{r['name']:<24} {r['model'] or '?':<20} {r['tokens']:>10} tokens{problem}")
    return 0


def cmd_chat(a: argparse.Namespace) -> int:
    overrides = {k: v for k, v in (("warm_mb", a.warm_mb), ("cold_gb", a.cold_gb)) if v is not None}
    return _open_chat(a, a.model, a.session, overrides)


def cmd_ps(a: argparse.Namespace) -> int:
    from localsym import running
    from localsym.session import open_sessions

    rows: list[dict[str, Any]] = [{"kind": "session", **r} for r in open_sessions()]
    for p in running.processes():
        rows.append(
            {
                "kind": p["kind"],
                "name": p.get("address", "") if p["kind"] == "serve" else "",
                "model": p.get("model"),
                "pid": p["pid"],
                "command": running.command_of(p["pid"]),
                "since": p.get("started"),
            }
        )
    if a.json:
        print(json.dumps(rows))
        return 0
    if not rows:
        print("nothing running: no session is open and no `run` or `serve` is going")
        return 0
    print(f"{'KIND':<8} {'NAME':<24} {'MODEL':<20} {'PID':>7}  COMMAND")
    for r in rows:
        print(f"{r['kind']:<8} {r['name'] or '-':<24} {r['model'] or '?':<20} {r['pid'] or '?':>7}  {r['command']}")
    return 0


def cmd_config(a: argparse.Namespace) -> int:
    """The resolved settings and where each came from: flag > env > session > file > default."""
    from localsym import config, logs
    from localsym.session import check_value, resolve_config, session_settings

    stored = session_settings(a.session) if a.session else {}
    if a.session and not stored:
        raise LocalsymError(f"no session named {a.session!r}")
    run_src = apply_defaults(a, session_model=bool(stored))
    if stored and a.model is None:
        a.model = stored.get("model")
    rows: dict[str, dict[str, Any]] = {}
    for key, (_, _, dest) in config.RUN.items():
        value = getattr(a, dest)
        if key == "model" and value is None:
            from localsym.session import default_model

            value = default_model()
        if key == "seed" and value == -1:
            value = -1
        rows[key] = {"value": value, "source": run_src[key]}
    overrides = {}
    for k in ("warm_mb", "cold_gb", "block_tokens", "kv_format"):
        v = getattr(a, k, None)
        if v is not None:
            overrides[k] = check_value(k, v)
    cfg, sources, _ = resolve_config(stored.get("config", {}), config.load().get("memory", {}), overrides)
    for k, v in cfg.__dict__.items():
        rows[k if k != "system" else "session_system"] = {"value": v, "source": sources[k]}
    out = {
        "config_file": str(config.path()),
        "config_file_exists": config.path().exists(),
        "log_file": str(logs.log_file()),
        "session": a.session,
        "settings": rows,
    }
    if a.json:
        print(json.dumps(out))
        return 0
    print(f"config file  {out['config_file']}{'' if out['config_file_exists'] else ' (none yet)'}")
    print(f"log file     {out['log_file']}")
    if a.session:
        print(f"session      {a.session}")
    print(f"\n{'SETTING':<20} {'VALUE':<28} SOURCE")
    for k, r in rows.items():
        v = r["value"]
        if v is None:
            shown = "none" if k == "system" else "auto"
        else:
            shown = repr(v) if isinstance(v, str) and (not v or " " in v) else str(v)
        if len(shown) > 28:
            shown = shown[:25] + "..."
        src = r["source"]
        if src == "env":
            src = f"env {config.env_name('system' if k == 'session_system' else k)}"
        print(f"{k:<20} {shown:<28} {src}")
    return 0


def cmd_completion(a: argparse.Namespace) -> int:
    from localsym.completion import script

    sys.stdout.write(script(build_parser(), a.shell))
    return 0


def cmd_serve(a: argparse.Namespace) -> int:
    from dataclasses import replace

    from localsym import running
    from localsym.server import serve
    from localsym.server.settings import ServerSettings, resolve_roots
    from localsym.session import default_model

    model = a.model or default_model()
    settings = ServerSettings(
        model=model,
        opts=replace(run_options(a), parallel=a.parallel),
        host=a.host,
        port=a.port,
        allow_roots=resolve_roots(a.allow_root),
        max_sessions=a.max_sessions,
        queue=a.queue,
        api_key=a.api_key or os.environ.get("LOCALSYM_API_KEY") or None,
        session_from_user=a.session_from_user,
    )
    with running.registered("serve", model=model, address=f"{a.host}:{a.port}"):
        serve(settings)
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from localsym import bench

    return bench.main(a)


EPILOG = """\
Output: with --json a command prints one JSON document on stdout; an error is then
{"error": "..."} on stdout with a non-zero exit (1 error, 2 usage, 130 interrupted).
Settings: a flag > LOCALSYM_* environment > what a session stored > config.toml > the
default; `localsym config` prints each with its source. The log is a rotating file
(`localsym config` names it); -v/--verbose also mirrors it to stderr and prints timings.
"""


def _add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest="verbose_sub",
        help="timings and stats on stderr (Ollama's `run --verbose`), and the log mirrored to stderr",
    )


def _add_no_server(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-server",
        action="store_true",
        help="run the model in this process even when a `localsym serve` of it is running (default: attach to it)",
    )


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="localsym",
        description="A local, offline LLM runtime with unbounded memory.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="store_true", help="print the version (of localsym and llama.cpp) and exit")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="timings and stats on stderr, and the log mirrored to stderr (also accepted after the command)",
    )
    p.add_argument(
        "--llama-log",
        action="store_true",
        help="llama.cpp's own log (model loading, backends) on stderr and in the log file",
    )
    p.add_argument("--json", action="store_true", dest="json_main", help="JSON output (with --version)")
    sub = p.add_subparsers(dest="command", parser_class=_Parser, metavar="COMMAND")

    s = sub.add_parser("pull", help="fetch a catalog model, or register a GGUF you have, in place")
    s.add_argument(
        "model",
        help="catalog name (smollm2-135m, gemma3-270m), ./file.gguf, or another tool's model: "
        "ollama:NAME:TAG, lmstudio:OWNER/REPO, hf:OWNER/REPO/FILE.gguf, llamacpp:FILE.gguf",
    )
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.add_argument("--json", action="store_true", help="print the model as JSON")
    s.set_defaults(func=cmd_pull)

    s = sub.add_parser("list", aliases=["ls"], help="models on this machine")
    s.add_argument(
        "--all",
        "-a",
        action="store_true",
        help="also the GGUFs of Ollama, LM Studio, the Hugging Face cache and llama.cpp's cache",
    )
    s.add_argument("--json", action="store_true", help="print the models as JSON")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="a model's shape and its fit plan (or one part of it)")
    s.add_argument("model")
    s.add_argument("--json", action="store_true", help="print as JSON")
    part = s.add_mutually_exclusive_group()
    part.add_argument("--template", dest="part_template", action="store_true", help="just the chat template (Jinja)")
    part.add_argument(
        "--parameters",
        dest="part_parameters",
        action="store_true",
        help="just the sampling parameters `run` uses (Ollama's names)",
    )
    part.add_argument(
        "--license", dest="part_license", action="store_true", help="just the license (GGUF general.license)"
    )
    part.add_argument(
        "--system", dest="part_system", action="store_true", help="just the model's own system prompt (Ollama's)"
    )
    add_runtime_flags(s)
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("rm", help="remove models, their block caches and learned routing")
    s.add_argument("model", nargs="+")
    s.add_argument("--json", action="store_true", help="print what was removed as JSON")
    s.add_argument("--force", action="store_true", help="remove a model even while a process has a session of it open")
    s.set_defaults(func=cmd_rm)

    s = sub.add_parser("prune", help="delete cached blocks that no session uses")
    s.add_argument("--json", action="store_true", help="print what was freed as JSON")
    s.set_defaults(func=cmd_prune)

    s = sub.add_parser(
        "run",
        help="answer one prompt, streaming to stdout (no prompt at a terminal: the chat)",
        description="Answer one prompt, streaming to stdout. The prompt is the argument, else standard input; "
        "with neither (at a terminal) the chat opens on MODEL, in a session named after it. A catalog model "
        "not pulled yet is pulled first.",
    )
    s.add_argument("model", help="model name, path to a GGUF, or another tool's model (see `pull`)")
    s.add_argument("prompt", nargs="?", help="the prompt (default: standard input)")
    s.add_argument("--json", action="store_true", help="print one JSON object at the end")
    s.add_argument("--system", default=None, help="system prompt")
    s.add_argument("--raw", action="store_true", help="no chat template: plain completion")
    s.add_argument(
        "--session",
        "-s",
        default=None,
        help="answer in this session, which keeps the exchange (default: none; with no prompt, the chat's)",
    )
    _add_no_server(s)
    add_sampling_flags(s)
    add_runtime_flags(s)
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("load", help="ingest a file or a tree into a session")
    s.add_argument("path")
    s.add_argument(
        "--no-ignore", action="store_true", help="load what .gitignore and other ignore files exclude (ripgrep's name)"
    )
    s.add_argument("--json", action="store_true", help="print the load report as JSON")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _add_session_flags(s)
    s.set_defaults(func=cmd_load)

    s = sub.add_parser("ask", help="ask a session a question (streams the answer)")
    s.add_argument("question")
    s.add_argument("--json", action="store_true", help="print the answer and its stats as JSON")
    add_sampling_flags(s)
    _add_session_flags(s)
    s.set_defaults(func=cmd_ask)

    s = sub.add_parser("chat", help="the terminal chat (Textual)")
    s.add_argument("model", nargs="?", default=None, help="model (default: the session's, else smollm2-135m)")
    s.add_argument("--session", "-s", default="default", help="session name (default: default)")
    s.add_argument("--warm-mb", type=float, default=None, help="RAM for the warm tier (MiB)")
    s.add_argument("--cold-gb", type=float, default=None, help="disk for the cold tier (GiB)")
    _add_no_server(s)
    add_sampling_flags(s)
    add_runtime_flags(s)
    s.set_defaults(func=cmd_chat)

    s = sub.add_parser("sessions", help="list sessions")
    s.add_argument("--json", action="store_true", help="print the sessions as JSON")
    s.set_defaults(func=cmd_sessions)

    s = sub.add_parser("ps", help="what is running: open sessions, `run` and `serve` processes")
    s.add_argument("--json", action="store_true", help="print them as JSON")
    s.set_defaults(func=cmd_ps)

    s = sub.add_parser(
        "config",
        help="the settings in force and where each came from",
        description="Every setting with its value and source: flag > env (LOCALSYM_NAME) > session > "
        "config file > default. Give flags (and --session) to see what a command with them would use.",
    )
    s.add_argument("--json", action="store_true", help="print as JSON")
    s.add_argument("--session", "-s", default=None, help="include what this session stored")
    s.add_argument("--model", "-m", default=None, help="model")
    s.add_argument("--system", default=None, help="run's system prompt")
    s.add_argument("--warm-mb", type=float, default=None, help="RAM for the warm tier (MiB)")
    s.add_argument("--cold-gb", type=float, default=None, help="disk for the cold tier (GiB)")
    s.add_argument("--block-tokens", type=int, default=None, help="tokens per block")
    s.add_argument("--kv-format", default=None, help="how sealed blocks keep their KV")
    add_sampling_flags(s)
    add_runtime_flags(s)
    s.set_defaults(func=cmd_config)

    s = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script. bash: `source <(localsym completion bash)` (or save it in "
        "~/.local/share/bash-completion/completions/localsym); zsh: `localsym completion zsh > "
        '"${fpath[1]}/_localsym"`; fish: `localsym completion fish > ~/.config/fish/completions/localsym.fish`.',
    )
    s.add_argument("shell", choices=["bash", "zsh", "fish"])
    s.set_defaults(func=cmd_completion)

    s = sub.add_parser("serve", help="OpenAI- and Ollama-compatible HTTP server over sessions")
    s.add_argument("--model", "-m", default=None, help="the model every session runs (default: the catalog default)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (any but localhost needs --api-key)")
    s.add_argument("--port", type=int, default=11435, help="port (default 11435)")
    s.add_argument(
        "--allow-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a directory /localsym/load may read (repeatable; none: loading is off)",
    )
    s.add_argument("--api-key", default=None, help="require this key (Bearer or x-api-key; default $LOCALSYM_API_KEY)")
    s.add_argument(
        "--max-sessions",
        type=int,
        default=4,
        help="sessions open at once (all on one copy of the model and, with --parallel, one context)",
    )
    s.add_argument(
        "--parallel",
        "-np",
        type=int,
        default=1,
        metavar="N",
        help="sessions whose working sets the one shared llama.cpp context holds at once, each with -c tokens "
        "(memory: N hot contexts however many sessions are open; another session waits or evicts the least "
        "recently used idle one); 0: a context per open session",
    )
    s.add_argument("--queue", type=int, default=8, help="requests that may wait for a session before a 503")
    s.add_argument(
        "--session-from-user",
        action="store_true",
        help="OpenAI's `user` field names the session (off: only the X-Localsym-Session header does, so one "
        "web-UI user's separate chats never share a memory)",
    )
    add_runtime_flags(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("bench", help="benchmarks (JSON + a table)")
    from localsym.bench import add_parsers

    add_parsers(s, add_runtime_flags)
    s.set_defaults(func=cmd_bench)

    seen = set()
    for name, parser in sub.choices.items():
        if id(parser) not in seen and name != "bench":
            seen.add(id(parser))
            _add_verbose(parser)
    return p


def _text_arg(value: str) -> str:
    """An argument the OS passed as bytes that are not UTF-8 (Python keeps them as lone
    surrogates, which nothing downstream can encode) -> the same text with U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _version(as_json: bool) -> int:
    from importlib import metadata

    from localsym import __version__

    try:
        llama = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        llama = "?"
    if as_json:
        print(json.dumps({"version": __version__, "llama_cpp_python": llama}))
    else:
        print(f"localsym {__version__} (llama-cpp-python {llama})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    global _JSON_ERRORS
    argv = list(sys.argv[1:] if argv is None else argv)
    _JSON_ERRORS = "--json" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        return _version(args.json_main or getattr(args, "json", False))
    if args.command is None:
        parser.error("a command is required (run, chat, pull, list, show, ps, config, ...)")
    args.verbose = args.verbose + getattr(args, "verbose_sub", 0)
    if not hasattr(args, "json"):
        args.json = False
    for name in ("prompt", "question", "system", "session", "model"):
        # text arguments; a path (`load PATH`, a model file) keeps its bytes, as the OS needs them
        v = getattr(args, name, None)
        if isinstance(v, str) and (name != "model" or not os.path.exists(v)):
            setattr(args, name, _text_arg(v))

    from localsym import logs

    chat = args.command == "chat" or (
        args.command == "run" and getattr(args, "prompt", "") is None and sys.stdin.isatty()
    )
    logs.setup(
        verbose=args.verbose > 0,
        llama_log=args.llama_log,
        terminal=not chat,  # Textual draws on this terminal
        warnings_to_terminal=args.command == "serve",
    )
    interrupted = threading.Event()

    def on_sigint(signum: int, frame: object) -> None:
        # llama.cpp polls an abort callback written in Python: raising there only prints
        # "Exception ignored", so the first Ctrl+C asks every decode to stop and the
        # command unwinds through its own cleanup; a second one interrupts at once
        if interrupted.is_set():
            raise KeyboardInterrupt
        interrupted.set()
        from localsym.session import cancel_all, cancel_remote

        cancel_all()
        cancel_remote()  # an answer read from a server: its connection is closed, the server stops it

    if args.command not in ("chat", "serve"):  # Textual and uvicorn handle their own keys
        signal.signal(signal.SIGINT, on_sigint)
    try:
        if args.command not in ("bench", "config", "completion"):
            session_model = False
            if args.command in ("ask", "load", "chat"):
                from localsym.session import session_exists

                session_model = session_exists(args.session)
            args.sources = apply_defaults(args, session_model=session_model)
        rc = args.func(args)
        if interrupted.is_set():
            raise KeyboardInterrupt
        if getattr(args, "ctx_note", None):
            sys.stderr.write(f"localsym: note: {args.ctx_note}\n")
        return rc
    except LocalsymError as e:
        if interrupted.is_set():
            return _interrupted()
        _fail(str(e))
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
        from localsym.faults import describe

        line = describe(e)  # a library error (zip, sqlite, OS): one line naming the cause
        if line is None:
            raise
        import logging

        logging.getLogger("localsym").error("%s failed: %s", args.command, line, exc_info=e)
        _fail(line)
        return 1


def _interrupted() -> int:
    if _JSON_ERRORS:
        _fail("interrupted")
    else:
        sys.stderr.write("\nlocalsym: interrupted\n" if sys.stdout.isatty() else "localsym: interrupted\n")
    return 130


if __name__ == "__main__":
    raise SystemExit(main())
