"""What conversation a session already holds, as the server saw it, so a client that resends
the whole conversation every turn (as OpenAI and Ollama clients do) pays only for what is new.

The ledger lists, in order, a digest of every message the session holds: the exchanges it
answered (the user's question and the answer *as sent*, so a reply cut at a stop string
still matches when the client sends it back) and the messages it was given as history
text. It lives beside the session's index (``server.json``), so matching survives a
restart; a session used meanwhile by another face (`localsym chat`) gets its new exchanges
appended from ``Session.messages()``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localsym.session import session_dir

FILE = "server.json"


@dataclass(frozen=True)
class Msg:
    role: str  # user, assistant, system, tool
    text: str

    @property
    def digest(self) -> str:
        return digest(self.role, self.text)


def digest(role: str, text: str) -> str:
    # whitespace at the ends is not meaning: clients and UIs trim it
    return hashlib.sha256(f"{role}\0{text.strip()}".encode("utf-8", "surrogatepass")).hexdigest()[:24]


def transcript(msgs: list[Msg]) -> str:
    """Earlier messages as the text a session ingests (``source="chat-history"``)."""
    return "\n\n".join(f"{m.role.capitalize()}: {m.text.strip()}" for m in msgs)


class Ledger:
    def __init__(self, path: Path | None, covered: list[dict[str, Any]], n_messages: int, loads: list[str]) -> None:
        self.path = path  # None: an ephemeral session, never written
        self.covered, self.n_messages, self.loads = covered, n_messages, loads

    @classmethod
    def load(cls, name: str, messages: list[dict], ephemeral: bool) -> Ledger:
        path = None if ephemeral else session_dir(name) / FILE
        data: dict[str, Any] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = {}
        ok = isinstance(data, dict) and isinstance(data.get("covered"), list)
        led = cls(
            path,
            data["covered"] if ok else [],
            int(data.get("n_messages", 0)) if ok else 0,
            [p for p in data.get("loads", []) if isinstance(p, str)] if ok else [],
        )
        led.sync(messages)
        return led

    def sync(self, messages: list[dict]) -> None:
        """Take in exchanges stored without the server (another face), or start over from
        the session's own messages when the ledger is not about this session any more."""
        if self.n_messages > len(messages):
            self.covered, self.n_messages = [], 0
        for m in messages[self.n_messages :]:
            self.covered.append({"d": digest(m["role"], m["content"]), "role": m["role"]})
        self.n_messages = len(messages)

    # -- matching -----------------------------------------------------------------------------------
    def match(self, history: list[Msg]) -> list[Msg] | None:
        """The request's earlier messages the session does not hold yet, or None when the
        request's history contradicts the session's (an edited or dropped message).

        A turn the server stopped because its client left is lenient: the client may leave
        it out, or send back the part of the answer it received."""
        i = 0
        for c in self.covered:
            if i < len(history) and self._same(c, history[i]):
                i += 1
            elif not c.get("stopped"):
                return None
        return history[i:]

    @staticmethod
    def _same(c: dict, m: Msg) -> bool:
        if c["d"] == m.digest:
            return True
        sent = c.get("sent")
        return (
            sent is not None
            and m.role == "assistant"
            and c["role"] == "assistant"
            and sent.strip().startswith(m.text.strip())
        )

    # -- recording ----------------------------------------------------------------------------------
    def extend(self, msgs: list[Msg]) -> None:
        self.covered += [{"d": m.digest, "role": m.role} for m in msgs]

    def add_turn(self, question: str, sent: str, stopped: bool, n_messages: int) -> None:
        q: dict[str, Any] = {"d": digest("user", question), "role": "user"}
        a: dict[str, Any] = {"d": digest("assistant", sent), "role": "assistant"}
        if stopped:
            q["stopped"] = a["stopped"] = True
            a["sent"] = sent
        self.covered += [q, a]
        self.n_messages = n_messages

    def add_load(self, path: str) -> None:
        if path not in self.loads:
            self.loads.append(path)

    def save(self) -> None:
        if self.path is None or not self.path.parent.is_dir():
            return
        data = json.dumps({"covered": self.covered, "n_messages": self.n_messages, "loads": self.loads})
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".server-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(data)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
