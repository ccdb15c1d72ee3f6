"""The chat and `run` as clients of a running `localsym serve` (Ollama's habit): one model
and one memory for the terminal chat and an editor.

``connect`` finds a `serve` of this machine (its record in ``paths.run_dir()``), asks it who
it is with a short timeout, and returns what the faces open sessions with: ``InProcess``
(``Session.open``, as without a server) or ``Server`` (the same calls over HTTP, through
the server's ``/localsym/open``, ``/localsym/ask`` and ``/localsym/load`` routes). The faces
hold either as a ``Sessions`` and its sessions as ``ChatSession``: nothing else in them
knows where the model runs.

A session is open in one process at a time (its lock file): a server that holds it is
asked, never bypassed; ``--no-server`` (``InProcess``) on a session the server holds gets
the usual one-line "session busy".
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, Protocol

from localsym.errors import LocalsymError
from localsym.runtime.engine import GenParams, GenStats, RunOptions
from localsym.runtime.limits import raised_note
from localsym.session._catalog import delete_session, rename_session, session_settings
from localsym.session._config import SessionConfig
from localsym.session._oneshot import OneShot
from localsym.session._reports import LoadReport, Progress, SessionStatus, TurnStats
from localsym.session._session import Session, SessionBusy

HELLO_TIMEOUT_S = 2.0  # a live server answers /localsym/server at once: its event loop never runs a decode
OPEN_TIMEOUT_S = 600.0  # opening waits for the session's turn in the server's queue
POLL_TIMEOUT_S = 10.0  # a look for other clients' turns never waits for one
_ANY_HOST = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class ChatTurn(Protocol):
    """A streamed answer: iterate for its pieces; ``stats`` is complete once it is finished
    (read to the end or closed)."""

    stats: TurnStats

    def __iter__(self) -> Iterator[str]: ...

    def close(self) -> None: ...

    def __enter__(self) -> ChatTurn: ...

    def __exit__(self, *exc: object) -> None: ...


class ChatSession(Protocol):
    """What the chat and `run` use of a session, in this process or on a server."""

    name: str
    model: str
    config: SessionConfig

    def messages(self) -> list[dict]: ...

    def status(self) -> SessionStatus: ...

    def ask(self, question: str, params: GenParams | None = None, raw: bool = False) -> ChatTurn: ...

    def load(
        self,
        path: str | Path,
        progress: Progress | None = None,
        no_ignore: bool = False,
        reading: Progress | None = None,
    ) -> LoadReport: ...

    def cancel(self) -> None: ...

    def save(self) -> None: ...

    def quant_mix(self) -> dict: ...

    def chat_template(self) -> str | None: ...

    def close(self) -> None: ...

    def __enter__(self) -> ChatSession: ...

    def __exit__(self, *exc: object) -> None: ...


class OneShotLike(Protocol):
    stats: GenStats

    def __iter__(self) -> Iterator[str]: ...

    def cancel(self) -> None: ...

    def close(self) -> None: ...

    def __enter__(self) -> OneShotLike: ...

    def __exit__(self, *exc: object) -> None: ...


class Sessions(Protocol):
    """Where sessions are opened: this process, or a running server."""

    remote: bool
    where: str  # "" in this process; "localsym serve at HOST:PORT" attached
    notes: list[str]  # why a server found was not used, one line each
    banner: str  # what the chat says once about where its sessions run ("" in this process)

    def open(
        self, name: str, model: str | None, opts: RunOptions, overrides: dict | None = None
    ) -> tuple[ChatSession, list[str]]: ...

    def oneshot(
        self, model: str, prompt: str, opts: RunOptions, params: GenParams, system: str | None, raw: bool
    ) -> OneShotLike: ...

    def rename(self, old: str, new: str) -> None: ...

    def delete(self, name: str) -> None: ...


class InProcess:
    """Sessions opened in this process (``--no-server``, or no server is running)."""

    remote = False
    where = ""
    banner = ""

    def __init__(self, notes: list[str] | None = None) -> None:
        self.notes = list(notes or [])

    def open(
        self, name: str, model: str | None, opts: RunOptions, overrides: dict | None = None
    ) -> tuple[ChatSession, list[str]]:
        try:
            s = Session.open(name, model, opts, overrides=overrides)
        except SessionBusy as e:
            raise SessionBusy(f"{e}{_holder(name)}") from None
        raised = raised_note(opts.n_ctx, s.engine.opts.n_ctx)  # `-c 1`: a session needs more, said once
        return s, [raised] if raised else []

    def oneshot(
        self, model: str, prompt: str, opts: RunOptions, params: GenParams, system: str | None, raw: bool
    ) -> OneShotLike:
        return OneShot(model, prompt, opts, params, system, raw)

    def rename(self, old: str, new: str) -> None:
        rename_session(old, new)

    def delete(self, name: str) -> None:
        delete_session(name)


def _holder(name: str) -> str:
    """Who holds a busy session, for its error: a `serve` is used by leaving out --no-server."""
    from localsym import running
    from localsym.session._catalog import session_dir

    pid = running.lock_holder(session_dir(name) / "session.lock", running._proc_flocks())
    if not pid:
        return ""
    command = running.command_of(pid)
    if " serve" in f" {command}":
        return f" ({command}, pid {pid}: without --no-server it is used through that server)"
    return f" ({command}, pid {pid})" if command else f" (pid {pid})"


# -- the server, over HTTP ------------------------------------------------------------------------
class _Calls:
    """The connections a session has in flight, so ``cancel`` (from another thread, or a
    signal handler) can cut them: the server sees its client leave and stops the turn."""

    def __init__(self) -> None:
        self._live: set[http.client.HTTPConnection] = set()
        self._lock = threading.Lock()
        self.cancelled = threading.Event()

    def add(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._live.add(conn)

    def discard(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._live.discard(conn)

    def cut(self) -> None:
        self.cancelled.set()
        with self._lock:
            live = list(self._live)
        for conn in live:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


_LIVE_TURNS: weakref.WeakSet[RemoteTurn] = weakref.WeakSet()


def cancel_remote() -> None:
    """Stop every answer this process is reading from a server (Ctrl+C in `run`)."""
    for turn in list(_LIVE_TURNS):
        turn.cancel()


class Server:
    """A running `localsym serve` that answered, and the sessions opened through it."""

    remote = True

    def __init__(self, host: str, port: int, info: dict[str, Any], pid: int, notes: list[str] | None = None) -> None:
        self.host, self.port, self.info, self.pid = host, port, info, pid
        self.key = os.environ.get("LOCALSYM_API_KEY") or None
        self.notes = list(notes or [])
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{port}"
        self.where = f"localsym serve at {self.address}"
        self.banner = (
            f"attached to {self.where} (pid {pid}): the model and the session are shared with its other "
            "clients, and its model settings apply (`--no-server` runs in this process instead)"
        )

    @property
    def model(self) -> str:
        return str(self.info.get("model", ""))

    # -- requests ---------------------------------------------------------------------------------
    def _headers(self, body: bytes | None) -> dict[str, str]:
        h = {"Accept": "application/json, application/x-ndjson, text/event-stream"}
        if body is not None:
            h["Content-Type"] = "application/json"
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        return h

    def call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = OPEN_TIMEOUT_S,
        calls: _Calls | None = None,
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request; the response once its status line is in (an error status raises
        LocalsymError with the server's message). The caller closes the connection."""
        data = None if body is None else json.dumps(body).encode()
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        if calls is not None:
            calls.add(conn)
        try:
            conn.request(method, path, body=data, headers=self._headers(data))
            resp = conn.getresponse()
            if resp.status >= 400:
                raise Refused(self.where, resp.status, _error_message(resp))
            return conn, resp
        except LocalsymError:
            conn.close()
            if calls is not None:
                calls.discard(conn)
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if calls is not None:
                calls.discard(conn)
                if calls.cancelled.is_set():
                    raise Stopped() from None
            raise LocalsymError(f"{self.where} stopped answering ({_why(e)})") from None

    def json(self, method: str, path: str, body: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
        conn, resp = self.call(method, path, body, **kw)
        try:
            data = json.loads(resp.read())
        except (OSError, ValueError, http.client.HTTPException) as e:
            raise LocalsymError(f"{self.where} sent a broken answer ({_why(e)})") from None
        finally:
            conn.close()
        if not isinstance(data, dict):
            raise LocalsymError(f"{self.where} sent a broken answer")
        return data

    # -- what the faces call ------------------------------------------------------------------------
    def open(
        self, name: str, model: str | None, opts: RunOptions, overrides: dict | None = None
    ) -> tuple[ChatSession, list[str]]:
        """``opts`` and the memory ``overrides`` are the server's business (it was started
        with its own); only the system prompt travels with the session."""
        system = (overrides or {}).get("system")
        return RemoteSession(self, name, system if isinstance(system, str) else None), []

    def oneshot(
        self, model: str, prompt: str, opts: RunOptions, params: GenParams, system: str | None, raw: bool
    ) -> OneShotLike:
        return RemoteOneShot(RemoteTurn(self, None, prompt, params, system, raw, _Calls()))

    def rename(self, old: str, new: str) -> None:
        raise LocalsymError(
            f"sessions are not renamed through {self.where}, which may hold {old!r} open: "
            "stop it, then `localsym chat --no-server` renames"
        )

    def delete(self, name: str) -> None:
        from urllib.parse import quote

        self.json("DELETE", f"/localsym/sessions/{quote(name, safe='')}")


class Stopped(Exception):
    """The request was cut by ``cancel``."""


class Refused(LocalsymError):
    """The server answered with an error status; ``message`` is its reason."""

    def __init__(self, where: str, status: int, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.status, self.message = status, message


def _why(e: BaseException) -> str:
    if isinstance(e, TimeoutError | socket.timeout):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def _error_message(resp: http.client.HTTPResponse) -> str:
    """The server's error in one line (OpenAI's shape under /localsym)."""
    try:
        body = json.loads(resp.read(1 << 16))
        err = body.get("error") if isinstance(body, dict) else None
        msg = err.get("message") if isinstance(err, dict) else err
        if isinstance(msg, str) and msg:
            return msg
    except (OSError, ValueError, http.client.HTTPException):
        pass
    return f"HTTP {resp.status} {resp.reason}"


def _params_body(p: GenParams) -> dict[str, Any]:
    return {
        "max_tokens": max(1, min(int(p.max_tokens), 1 << 30)),
        "temp": p.temp,
        "top_k": p.top_k,
        "top_p": p.top_p,
        "min_p": p.min_p,
        "repeat_penalty": p.repeat_penalty,
        "seed": p.seed,
        "stop": list(p.stop),
    }


def _status(d: dict[str, Any]) -> SessionStatus:
    names = {f.name for f in fields(SessionStatus)}
    return SessionStatus(**{k: v for k, v in d.items() if k in names})


def _turn_stats(d: dict[str, Any]) -> TurnStats:
    names = {f.name for f in fields(TurnStats)}
    return TurnStats(**{k: v for k, v in d.items() if k in names})


class RemoteTurn:
    """An answer streamed from the server's ``/localsym/ask`` (NDJSON). Closing it early, or
    ``cancel``, closes the connection: the server stops the turn between two tokens and
    stores it as far as it got."""

    def __init__(
        self,
        server: Server,
        session: str | None,
        question: str,
        params: GenParams | None,
        system: str | None,
        raw: bool,
        calls: _Calls,
        done: Any = None,
    ) -> None:
        self.server, self.calls = server, calls
        self.body: dict[str, Any] = {"question": question, "params": _params_body(params or GenParams()), "raw": raw}
        if session is not None:
            self.body["session"] = session
        if system is not None:
            self.body["system"] = system
        self.stats = TurnStats()
        self.status: SessionStatus | None = None  # the session's state after the turn
        self._done = done  # called once the server has the turn, however it ended
        self.ended = False  # read to the end, stopped or broken off
        self._gen: Iterator[str] | None = None
        self._cancel = threading.Event()
        _LIVE_TURNS.add(self)

    def __iter__(self) -> Iterator[str]:
        if self._gen is None:
            self._gen = self._run()
        return self._gen

    def text(self) -> str:
        return "".join(self)

    def cancel(self) -> None:
        self._cancel.set()
        self.calls.cut()

    def close(self) -> None:
        gen = self._gen
        if gen is not None and hasattr(gen, "close"):
            gen.close()
        self.ended = True
        _LIVE_TURNS.discard(self)

    def __enter__(self) -> RemoteTurn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> Iterator[str]:
        st, t0 = self.stats, time.perf_counter()
        pieces: list[str] = []
        finished = False
        self.calls.cancelled.clear()
        if self._cancel.is_set():
            st.cancelled, st.stop_reason = True, "cancelled"
            return
        try:
            conn, resp = self.server.call("POST", "/localsym/ask", self.body, timeout=None, calls=self.calls)
        except Stopped:
            st.cancelled, st.stop_reason = True, "cancelled"
            return
        try:
            if self._cancel.is_set():  # cancelled while the request went out
                return
            while True:
                line = resp.readline()
                if not line:
                    break
                event = json.loads(line)
                if not isinstance(event, dict):
                    continue
                piece = event.get("piece")
                if isinstance(piece, str):
                    if not pieces:
                        st.ttft_s = time.perf_counter() - t0
                    pieces.append(piece)
                    yield piece
                elif event.get("done"):
                    if isinstance(event.get("stats"), dict):
                        self.stats = st = _turn_stats(event["stats"])
                    if isinstance(event.get("status"), dict):
                        self.status = _status(event["status"])
                    finished = True
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not self._cancel.is_set():
                raise LocalsymError(f"{self.server.where} broke off the answer ({_why(e)})") from None
        finally:
            conn.close()
            self.calls.discard(conn)
            if not finished:
                st.answer = "".join(pieces)
                st.completion_tokens = st.completion_tokens or len(pieces)
                st.cancelled = self._cancel.is_set() or st.cancelled
                st.stop_reason = "cancelled" if st.cancelled else "closed"
            if self._done is not None:  # the server stores a stopped turn as far as it got
                self._done(self)
            self.ended = True
        if not finished and not self._cancel.is_set():
            raise LocalsymError(f"{self.server.where} ended the answer early (see its log)")


class RemoteOneShot:
    """`run`'s one prompt on the server, in a throwaway session: what ``OneShot`` is in
    this process, with its GenStats."""

    def __init__(self, turn: RemoteTurn) -> None:
        self.turn = turn
        self.stats = GenStats()

    def __iter__(self) -> Iterator[str]:
        try:
            yield from self.turn
        finally:
            self.stats = gen_stats(self.turn.stats)

    def cancel(self) -> None:
        self.turn.cancel()

    def close(self) -> None:
        self.turn.close()

    def __enter__(self) -> RemoteOneShot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def gen_stats(t: TurnStats) -> GenStats:
    """A turn's numbers in `run`'s terms (prefill: until the first piece)."""
    n = t.completion_tokens
    decode_s = max(n - 1, 0) / t.decode_tok_s if t.decode_tok_s > 0 else 0.0
    return GenStats(
        prompt_tokens=t.prompt_tokens,
        completion_tokens=n,
        prefill_s=t.ttft_s,
        decode_s=decode_s,
        ttft_s=t.ttft_s,
        cancelled=t.cancelled,
        stop_reason=t.stop_reason,
    )


class RemoteSession:
    """A session the server holds open, as the chat and `run` use one. Its state (status,
    messages) is what the server sent with the last answer or load: reading it never waits
    for a turn another client runs on the same session."""

    def __init__(self, server: Server, name: str, system: str | None) -> None:
        self.server, self.name, self.system = server, name, system
        self.calls = _Calls()
        self._turn: RemoteTurn | None = None
        self._apply(self._state(False))

    def _state(self, mix: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"session": self.name, "quant_mix": mix}
        if self.system is not None:
            body["system"] = self.system
        return self.server.json("POST", "/localsym/open", body, calls=self.calls)

    def _apply(self, d: dict[str, Any]) -> None:
        try:
            self.model = str(d["model"])
            names = {f.name for f in fields(SessionConfig)}
            self.config = SessionConfig(**{k: v for k, v in dict(d["config"]).items() if k in names})
            self._messages = [m for m in d["messages"] if isinstance(m, dict)]
            self._status = _status(d["status"])
            self._template = d.get("chat_template")
            version = d.get("version")
            self._version = version if isinstance(version, str) else ""
        except (KeyError, TypeError, ValueError) as e:
            raise LocalsymError(f"{self.server.where} sent a broken session state ({e})") from None

    # -- state ----------------------------------------------------------------------------------------
    def messages(self) -> list[dict]:
        return list(self._messages)

    def status(self) -> SessionStatus:
        return self._status

    def poll(self) -> tuple[list[dict], bool]:
        """What other clients added to this session since the last look (an editor's turns),
        and whether its history was replaced (then ``messages()`` is all of it, to show
        again). Never waits behind a turn in progress; asks nothing while this client's own
        turn runs."""
        if self._asking:
            return [], False
        name, since = urllib.parse.quote(self.name, safe=""), urllib.parse.quote(self._version, safe="")
        d = self.server.json("GET", f"/localsym/sessions/{name}/messages?since={since}", timeout=POLL_TIMEOUT_S)
        got = d.get("messages")
        if not isinstance(got, list) or self._asking:  # this client's turn began meanwhile
            return [], False
        version = d.get("version")
        self._version = version if isinstance(version, str) else ""
        messages = [m for m in got if isinstance(m, dict)]
        had, self._messages = self._messages, messages
        if len(messages) < len(had) or any(a.get("role") != b.get("role") for a, b in zip(had, messages)):
            return [], True
        return messages[len(had) :], False

    @property
    def _asking(self) -> bool:
        """This client's own turn is running (its exchange is not in the list yet)."""
        return self._turn is not None and not self._turn.ended

    @property
    def total_tokens(self) -> int:
        return self._status.total_tokens

    def chat_template(self) -> str | None:
        return self._template if isinstance(self._template, str) else None

    def quant_mix(self) -> dict:
        d = self._state(True)
        self._apply(d)
        mix = d.get("quant_mix")
        if not isinstance(mix, dict):
            raise LocalsymError(f"{self.server.where} sent no format mix")
        return mix

    def save(self) -> None:
        """Nothing to do here: the server writes every block as it is made and records the
        session's totals when it closes it."""

    # -- asking and loading ---------------------------------------------------------------------------
    def ask(self, question: str, params: GenParams | None = None, raw: bool = False) -> ChatTurn:
        if not question.strip():
            raise LocalsymError("empty question")

        def done(turn: RemoteTurn) -> None:
            if turn.status is not None:
                self._status = turn.status
            self._messages += [
                {"role": "user", "content": question},
                {"role": "assistant", "content": turn.stats.answer},
            ]

        self._turn = RemoteTurn(self.server, self.name, question, params, self.system, raw, self.calls, done)
        return self._turn

    def load(
        self,
        path: str | Path,
        progress: Progress | None = None,
        no_ignore: bool = False,
        reading: Progress | None = None,
    ) -> LoadReport:
        """The server's ``/localsym/load``: it reads the path itself, only under the roots it
        was started with (``--allow-root``); a refusal is its one-line reason. ``reading``
        is not called: the server reports tokens, not a document's pages."""
        if no_ignore:
            raise LocalsymError(f"{self.server.where} loads files as their ignore files say (no --no-ignore)")
        real = str(Path(path).expanduser().absolute())
        self.calls.cancelled.clear()
        try:
            conn, resp = self.server.call(
                "POST", "/localsym/load", {"path": real, "session": self.name}, timeout=None, calls=self.calls
            )
        except Stopped:
            raise LocalsymError("load stopped") from None
        except Refused as e:  # the server reads the files itself, and only under its --allow-root
            raise LocalsymError(f"{self.server.where} refused it: {e.message}") from None
        report: dict[str, Any] | None = None
        try:
            for event, data in _sse(resp):
                if event == "progress" and progress is not None and isinstance(data, dict):
                    progress(int(data.get("done", 0)), int(data.get("total", 0)), str(data.get("source", "")))
                elif event == "done" and isinstance(data, dict):
                    report = data
                elif event == "error":
                    err = data.get("error") if isinstance(data, dict) else None
                    msg = err.get("message") if isinstance(err, dict) else None
                    raise LocalsymError(f"{self.server.where}: {msg or 'the load failed'}")
        except (OSError, ValueError, http.client.HTTPException) as e:
            if self.calls.cancelled.is_set():
                raise LocalsymError("load stopped (the server keeps what it had read)") from None
            raise LocalsymError(f"{self.server.where} broke off the load ({_why(e)})") from None
        finally:
            conn.close()
            self.calls.discard(conn)
        if report is None:
            raise LocalsymError(f"{self.server.where} ended the load early (see its log)")
        with contextlib.suppress(LocalsymError):
            self._apply(self._state(False))
        return LoadReport(
            files=int(report.get("files", 0)),
            tokens=int(report.get("tokens", 0)),
            blocks=int(report.get("blocks", 0)),
            computed_blocks=int(report.get("computed_blocks", 0)),
            reused_blocks=int(report.get("reused_blocks", 0)),
            seconds=float(report.get("seconds", 0.0)),
            skipped=[
                (str(s.get("path")), str(s.get("reason"))) for s in report.get("skipped", []) if isinstance(s, dict)
            ],
        )

    def cancel(self) -> None:
        """Stop the answer (or load) in flight: its connection is closed, which the server
        takes as its client leaving."""
        if self._turn is not None:
            self._turn.cancel()
        else:
            self.calls.cut()

    def close(self) -> None:
        """The server keeps the session open for its other clients; nothing runs here."""
        if self._turn is not None:
            self._turn.close()
            self._turn = None

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sse(resp: http.client.HTTPResponse) -> Iterator[tuple[str, Any]]:
    """(event, data) of a text/event-stream response, as the events come."""
    event, data = "message", list[str]()
    while True:
        raw = resp.readline()
        if not raw:
            return
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip(" "))


# -- finding a server -----------------------------------------------------------------------------
def _split(address: str) -> tuple[str, int] | None:
    host, _, port = str(address).rpartition(":")
    host = host.strip("[]")
    try:
        return _ANY_HOST.get(host, host), int(port)
    except ValueError:
        return None


def _hello(host: str, port: int) -> dict[str, Any]:
    """``GET /localsym/server`` with a short timeout; LocalsymError says why not."""
    probe = Server(host, port, {}, 0)
    return probe.json("GET", "/localsym/server", timeout=HELLO_TIMEOUT_S)


def _same_model(want: str, info: dict[str, Any]) -> bool:
    from localsym import model_store

    if want in (info.get("model"), f"{info.get('model')}:latest"):
        return True
    try:
        return Path(model_store.resolve(want)).resolve() == Path(str(info.get("model_path"))).resolve()
    except (LocalsymError, OSError):
        return False


def wanted_model(model: str | None, session: str | None) -> str:
    """The model a face asks for: the one named, else the session's, else the default."""
    if model:
        return model
    if session:
        with contextlib.suppress(LocalsymError):
            stored = session_settings(session).get("model")
            if isinstance(stored, str) and stored:
                return stored
    from localsym.catalog import default_model

    return default_model()


def connect(model: str | None, session: str | None = None, no_server: bool = False) -> Sessions:
    """Where the faces open sessions: a `localsym serve` running here that answers at once
    and serves ``model`` (or the session's, or the default), else this process. Why a server
    found was passed by is one note each (``Sessions.notes``)."""
    if no_server:
        return InProcess()
    from localsym import running

    gone: list[dict[str, Any]] = []
    live = [p for p in running.processes(gone) if p.get("kind") == "serve"]
    notes = [
        f"the localsym serve recorded at {p.get('address', '?')} (pid {p.get('pid', '?')}) is gone; "
        "running in this process"
        for p in gone
        if p.get("kind") == "serve"
    ]
    if not live:
        return InProcess(notes)
    want = wanted_model(model, session)
    for p in reversed(live):  # the newest first
        addr = _split(p.get("address", ""))
        if addr is None:
            continue
        host, port = addr
        where = f"localsym serve at {p.get('address')} (pid {p.get('pid')})"
        try:
            info = _hello(host, port)
        except LocalsymError as e:
            msg = str(e)
            if "API key" in msg:
                reason = "it needs an API key: set LOCALSYM_API_KEY"
            elif "no route" in msg:
                reason = "it is an older localsym without /localsym/server"
            else:
                reason = "it does not answer"
            notes.append(f"{where}: {reason}; running in this process")
            continue
        if not _same_model(want, info):
            notes.append(f"{where} serves {info.get('model')}, not {want}; running in this process")
            continue
        return Server(host, port, info, int(p.get("pid") or 0))
    return InProcess(notes)
