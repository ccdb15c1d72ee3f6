"""SVG snapshots of screens whose content does not depend on timing.

Update after a deliberate UI change with `pytest tests/test_tui_snapshots.py --snapshot-update`."""

from test_tui import _ready, wait_until

from localsym.session import RunOptions
from localsym.tui import ChatApp
from localsym.tui.widgets import PromptInput

SIZE = (110, 36)


def _app():
    return ChatApp("smollm2-135m", "snap", RunOptions(n_ctx=2048, vram="cpu"))


async def _ready_still(pilot):
    """Ready, with the prompt's cursor held still: a blinking cursor is drawn or not by timing."""
    await _ready(pilot, pilot.app)
    pilot.app.query_one(PromptInput).cursor_blink = False


async def _type(pilot, text):
    from localsym.tui.widgets import MessageView

    pilot.app.query_one(PromptInput).text = text
    await pilot.press("enter")
    await wait_until(pilot, lambda: any(m.role == "note" for m in pilot.app.query(MessageView)))
    await _settle(pilot)


async def _settle(pilot, timeout: float = 15.0) -> None:
    """Wait until two screenshots a beat apart agree: layout and focus changes land in later refreshes."""
    import time

    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        await pilot.wait_for_scheduled_animations()
        await pilot.pause(0.4)
        shot = pilot.app.export_screenshot()
        if shot == last:
            return
        last = shot


def test_help_screen(home, snap_compare):
    async def before(pilot):
        await _ready_still(pilot)
        await _type(pilot, "/help")

    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_memory_table(home, snap_compare):
    async def before(pilot):
        await _ready_still(pilot)
        await _type(pilot, "/memory")

    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)


def test_session_picker(home, snap_compare):
    async def before(pilot):
        await _ready_still(pilot)
        pilot.app.set_focus(None)  # whether the dimmed prompt behind the picker shows its cursor is timing
        await pilot.press("ctrl+s")
        await wait_until(pilot, lambda: len(pilot.app.screen_stack) > 1)
        await _settle(pilot)

    assert snap_compare(_app(), terminal_size=SIZE, run_before=before)
