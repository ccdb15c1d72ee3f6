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
    """Enter sends; Ctrl+J (or Shift+Enter where the terminal tells them apart) is a newline.
    Up on the first line and Down on the last walk the earlier prompts, as in a shell."""

    @dataclass
    class Submitted(Message):
        text: str

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prompts: list[str] = []  # earlier prompts, oldest first (the app fills and keeps them)
        self._walk: int | None = None  # index into prompts while walking them
        self._draft = ""  # what was typed before the walk began

    def reset_walk(self) -> None:
        self._walk, self._draft = None, ""

    def _show(self, text: str) -> None:
        self.text = text
        self.move_cursor(self.document.end)

    def _walk_prompts(self, step: int) -> bool:
        """One step back (-1) or forward (+1) through the prompts; False when there is none."""
        if not self.prompts or (self._walk is None and step > 0):
            return False
        if self._walk is None:
            self._draft, at = self.text, len(self.prompts) - 1
        else:
            at = self._walk + step
        if at < 0:
            return True  # the oldest: stay
        if at >= len(self.prompts):
            draft = self._draft
            self.reset_walk()
            self._show(draft)
            return True
        self._walk = at
        self._show(self.prompts[at])
        return True

    async def _on_key(self, event: events.Key) -> None:
        row = self.cursor_location[0]
        if (event.key == "up" and row == 0) or (event.key == "down" and row == self.document.line_count - 1):
            if self._walk_prompts(-1 if event.key == "up" else 1):
                event.prevent_default()
                event.stop()
                return
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
