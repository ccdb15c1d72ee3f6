"""The chat's widgets: messages, the prompt box and the status bar."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Label, Markdown, Static, TextArea


class MessageView(Vertical, can_focus=True):
    """One message: a role line and a Markdown body that can stream. Click it (or Tab to
    it) and press c to copy it."""

    BINDINGS = [Binding("c", "copy", "Copy message"), Binding("y", "copy", "Copy message", show=False)]
    DEFAULT_CSS = """
    MessageView { height: auto; margin: 0 1 1 1; padding: 0 1; }
    MessageView:focus { background: $boost; }
    MessageView.user { border-left: thick $accent; }
    MessageView.assistant { border-left: thick $success; }
    MessageView.note { border-left: thick $warning; color: $text-muted; }
    MessageView > Label { text-style: bold; }
    MessageView > Markdown { margin: 0; padding: 0; }
    """

    def __init__(self, role: str, text: str = "") -> None:
        super().__init__(classes=role)
        self.role = role
        self.text = text

    def compose(self) -> ComposeResult:
        yield Label({"user": "you", "assistant": "localsym", "note": "·"}.get(self.role, self.role))
        yield Markdown(self.text)

    @property
    def body(self) -> Markdown:
        return self.query_one(Markdown)

    def action_copy(self) -> None:
        self.app.copy_to_clipboard(self.text)
        self.app.notify("message copied")


class PromptInput(TextArea):
    """Enter sends; Ctrl+J (or Shift+Enter where the terminal tells them apart) is a newline."""

    @dataclass
    class Submitted(Message):
        text: str

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            text = self.text
            if text.strip():
                self.post_message(self.Submitted(text))
                self.clear()
            return
        if event.key in ("ctrl+j", "shift+enter"):
            event.prevent_default()
            event.stop()
            self.insert("\n")
            return
        await super()._on_key(event)


class StatusBar(Static):
    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """
