"""Ollama's and llama.cpp's CLI habits (#18) and the CLI's bad-input cases (#17), as a user
meets them: real processes of `python -m localsym`, the real SmolLM2, real files."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from conftest import GEMMA, SMOL, run_cli


def _cli(*args: str | bytes, home: Path, env: dict | None = None, stdin: bytes | None = None, timeout: float = 300):
    """`python -m localsym` with bytes in and out (argv may hold bytes that are not UTF-8)."""
    e = dict(os.environ, LOCALSYM_HOME=str(home), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "localsym", *args], env=e, capture_output=True, timeout=timeout, input=stdin
    )


def _one_line(r) -> str:
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
    assert r.returncode != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("localsym: error:")
    return lines[0]


def _json_error(r, rc: int = 1) -> str:
    """With --json an error is {"error": ...} on stdout, nothing on stderr, a non-zero exit."""
    assert r.returncode == rc, (r.stdout, r.stderr)
    assert r.stderr.strip() == "", r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"error"} and out["error"]
    return out["error"]


def test_version(home):
    from localsym import __version__

    r = run_cli("--version", home=home)
    assert r.returncode == 0 and r.stdout.startswith(f"localsym {__version__} (llama-cpp-python 0.3.36")
    r = run_cli("--version", "--json", home=home)
    assert json.loads(r.stdout) == {"version": __version__, "llama_cpp_python": "0.3.36"}


def test_json_errors_on_every_command_that_prints_data(home):
    assert "unknown model 'nope'" in _json_error(run_cli("show", "nope", "--json", home=home))
    assert "unknown model 'nope'" in _json_error(run_cli("run", "nope", "hi", "--json", home=home))
    assert "not pulled yet" in _json_error(run_cli("show", GEMMA, "--license", "--json", home=home))
    assert "bad session name" in _json_error(run_cli("ask", "hi", "-s", "a b", "--json", home=home))
    assert "no session named" in _json_error(run_cli("config", "-s", "none", "--json", home=home))
    assert "unknown model 'nope'" in _json_error(run_cli("rm", "nope", "--json", home=home))
    assert "unrecognized arguments" in _json_error(run_cli("list", "--json", "--bogus", home=home), rc=2)
    assert "--top-p" in _json_error(run_cli("run", SMOL, "hi", "--top-p", "2", "--json", home=home))
    # data commands answer in JSON
    assert json.loads(run_cli("ps", "--json", home=home).stdout) == []
    assert json.loads(run_cli("sessions", "--json", home=home).stdout) == []
    assert json.loads(run_cli("prune", "--json", home=home).stdout) == {"blocks": 0, "freed_bytes": 0}
    pulled = json.loads(run_cli("pull", SMOL, "--json", home=home).stdout)
    assert pulled["name"] == SMOL and pulled["sha256"].startswith("b179c9523d0e")


@pytest.mark.parametrize(
    "flags,word",
    [
        (["--top-p", "1.5"], "--top-p"),
        (["--min-p", "-0.1"], "--min-p"),
        (["--top-k", "-3"], "--top-k"),
        (["--temp", "inf"], "--temp"),
        (["--repeat-penalty", "nan"], "--repeat-penalty"),
        (["--seed", "-7"], "--seed"),
        (["-ngl", "most"], "-ngl"),
        (["-ngl", "-2"], "-ngl"),
        (["-n", "0"], "-n"),
        (["--n-cpu-moe", "-1"], "--n-cpu-moe"),
    ],
)
def test_bad_sampling_and_runtime_flags_are_one_line(home, flags, word):
    assert word in _one_line(run_cli("run", SMOL, "hi", *flags, home=home))


def test_flag_values_as_llama_cpp_takes_them(home):
    from localsym.cli import build_parser
    from localsym.flags import apply_defaults, gen_params, run_options

    p = build_parser()
    for value, want in (("auto", None), ("all", -1), ("-1", -1), ("0", 0), ("12", 12)):
        a = p.parse_args(["run", SMOL, "hi", "-ngl", value])
        assert run_options(a).n_gpu_layers == want
    for argv in (["run", SMOL, "hi"], ["ask", "q", "-s", "x"], ["chat"], ["config"]):
        a = p.parse_args([*argv, "-n", "-1", "--top-k", "5", "--top-p", "0.5", "--min-p", "0.2", "--seed", "9"])
        apply_defaults(a)
        g = gen_params(a)
        assert g.max_tokens >= 1 << 30  # no limit but the context
        assert (g.top_k, g.top_p, g.min_p, g.seed) == (5, 0.5, 0.2, 9)
    a = p.parse_args(["ask", "q", "-s", "x"])
    apply_defaults(a)
    g = gen_params(a)
    assert (g.max_tokens, g.temp, g.top_k, g.seed) == (256, 0.0, 40, 0xFFFFFFFF)  # the defaults
    # -ngl all reaches the fit plan: every layer and the output on the GPU
    r = run_cli("show", SMOL, "-ngl", "all", "--vram", "8GiB", "--json", home=home)
    assert json.loads(r.stdout)["plan"]["n_gpu_layers"] == 31


def test_run_with_sampling_flags_verbose_and_no_limit(home):
    args = ["--temp", "0.8", "--top-k", "20", "--top-p", "0.9", "--min-p", "0.1", "--repeat-penalty", "1"]
    first = run_cli("run", SMOL, "Name a fruit.", *args, "--seed", "7", "-n", "3", "--json", "-c", "256", home=home)
    assert first.returncode == 0, first.stderr
    again = run_cli("run", SMOL, "Name a fruit.", *args, "--seed", "7", "-n", "3", "--json", "-c", "256", home=home)
    assert json.loads(first.stdout)["text"] == json.loads(again.stdout)["text"]  # the seed reaches the sampler
    assert json.loads(first.stdout)["completion_tokens"] <= 3
    # --verbose after the command: Ollama's timing lines on stderr, the answer alone on stdout
    r = run_cli("run", SMOL, "Say hi.", "-n", "2", "-c", "256", "--verbose", home=home)
    assert r.returncode == 0, r.stderr
    for line in ("total duration:", "load duration:", "prompt eval count:", "eval count:", "eval rate:"):
        assert line in r.stderr
    assert "eval" not in r.stdout and r.stdout.strip()
    assert "eval count" not in run_cli("run", SMOL, "Say hi.", "-n", "1", "-c", "256", home=home).stderr
    # -n -1: no limit but the model's end of turn or the context's end
    r = run_cli("run", SMOL, "Once upon a time", "--raw", "-n", "-1", "-c", "24", "--json", home=home)
    out = json.loads(r.stdout)
    assert out["stop_reason"] in ("eog", "context") and out["completion_tokens"] > 1


def test_binary_stdin_and_non_utf8_argv(home):
    noise = bytes(range(256)) * 3 + b"\x00\xff\xfe"
    r = _cli("run", SMOL, "-n", "1", "-c", "2048", "--json", home=home, stdin=noise)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["prompt_tokens"] > 100
    assert b"Traceback" not in r.stderr and b"not UTF-8" in r.stderr
    r = _cli("run", SMOL, b"\xff\xfe say hi", "-n", "1", "-c", "256", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completion_tokens"] == 1
    assert "bad session name" in _one_line(_cli("ask", "hi", "--session", b"s\xff", home=home))
    assert "bad session name" in _one_line(_cli("load", ".", "--session", b"\xfe", home=home))
    assert not (home / "data" / "sessions").exists() or not any((home / "data" / "sessions").iterdir())


def test_show_parts(home):
    r = run_cli("show", SMOL, "--template", home=home)
    assert r.returncode == 0 and "<|im_start|>" in r.stdout and "{%" in r.stdout
    assert run_cli("show", SMOL, "--license", home=home).stdout.strip() == "apache-2.0"
    lic = json.loads(run_cli("show", SMOL, "--license", "--json", home=home).stdout)
    assert lic == {"license": "apache-2.0", "license_source": "gguf"}
    r = run_cli("show", SMOL, "--system", home=home)
    assert r.returncode == 0 and r.stdout == "" and "no system prompt" in r.stderr
    assert json.loads(run_cli("show", SMOL, "--system", "--json", home=home).stdout) == {"system": None}
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text("[run]\ntemperature = 0.7\ntop_k = 12\n")
    r = run_cli("show", SMOL, "--parameters", home=home)
    params = dict(line.split(None, 1) for line in r.stdout.splitlines())
    assert params["temperature"] == "0.7" and params["top_k"] == "12" and params["num_predict"] == "256"
    line = _one_line(run_cli("show", SMOL, "--template", "--license", home=home))  # one part at a time
    assert "not allowed with argument --template" in line


def test_config_sources_and_defaults_reach_commands(home, tmp_path):
    (home / "config").mkdir()
    cfg = home / "config" / "config.toml"
    cfg.write_text('[run]\nctx_size = 256\ntemp = 0.5\nn_predict = 2\nngl = "all"\n[memory]\nwarm_mb = 64\n')
    env = {"LOCALSYM_TEMP": "0.25", "LOCALSYM_WARM_MB": "128"}
    r = _cli("config", "--top-k", "7", "--json", home=home, env=env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    s = out["settings"]
    assert out["config_file"] == str(cfg) and out["log_file"] == str(home / "logs" / "localsym.log")
    assert s["top_k"] == {"value": 7, "source": "flag"}
    assert s["temp"] == {"value": 0.25, "source": "env"}
    assert s["ctx_size"] == {"value": 256, "source": "config file"}
    assert s["n_gpu_layers"] == {"value": -1, "source": "config file"}
    assert s["seed"] == {"value": -1, "source": "default"}
    assert s["warm_mb"] == {"value": 128.0, "source": "env"}
    assert s["model"] == {"value": SMOL, "source": "default"}
    # the file's n_predict and ctx_size reach `run`
    r = run_cli("run", SMOL, "Tell me a story.", "--json", home=home)
    assert json.loads(r.stdout)["completion_tokens"] <= 2
    # a session's stored values sit between the environment and the file
    doc = tmp_path / "doc.txt"
    doc.write_text("The code word is KX-4471.\n")
    r = run_cli("load", str(doc), "-s", "notes", "--cold-gb", "3", "-c", "1024", "--json", home=home)
    assert r.returncode == 0, r.stderr
    s = json.loads(run_cli("config", "-s", "notes", "--json", home=home).stdout)["settings"]
    assert s["cold_gb"] == {"value": 3.0, "source": "session"} and s["model"]["source"] == "session"
    s = json.loads(_cli("config", "-s", "notes", "--json", home=home, env={"LOCALSYM_COLD_GB": "4"}).stdout)
    assert s["settings"]["cold_gb"] == {"value": 4.0, "source": "env"}
    # ask takes the sampling flags and --verbose after the command
    q = ("ask", "What is the code word?", "-s", "notes", "-n", "2", "-c", "1024")
    r = run_cli(*q, "--verbose", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert "eval count:" in r.stderr and "session:" in r.stderr
    sources = json.loads(r.stdout)["sources"]  # the blocks that served the answer
    assert [s["path"] for s in sources] == [str(doc)] and f"{doc}:1-1 (score" in r.stderr
    # bad values are one line naming where they came from; nothing is stored
    cfg.write_text("[run]\nctx_size = -3\n")
    assert "config.toml" in _one_line(run_cli("run", SMOL, "hi", home=home))
    cfg.write_text("[run]\nflavour = 1\n")
    assert "unknown key 'flavour'" in _one_line(run_cli("config", home=home))
    cfg.unlink()
    assert "LOCALSYM_TOP_P" in _one_line(_cli("run", SMOL, "hi", home=home, env={"LOCALSYM_TOP_P": "x"}))
    line = _one_line(_cli("ask", "hi", "-s", "notes", "-c", "1024", home=home, env={"LOCALSYM_WARM_MB": "nan"}))
    assert "LOCALSYM_WARM_MB" in line
    s = json.loads(run_cli("config", "-s", "notes", "--json", home=home).stdout)["settings"]
    assert s["warm_mb"]["source"] == "default"  # the environment's value was never stored


def test_ps_lists_open_sessions_and_runs(home, tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from localsym.session import Session, RunOptions\n"
            "s = Session.open('held', 'smollm2-135m', RunOptions(n_ctx=256, vram='cpu'))\n"
            "print('ready', flush=True); sys.stdin.readline(); s.close()",
        ],
        env=dict(os.environ, LOCALSYM_HOME=str(home)),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        rows = json.loads(run_cli("ps", "--json", home=home).stdout)
        assert [(r["kind"], r["name"], r["model"], r["pid"]) for r in rows] == [("session", "held", SMOL, holder.pid)]
        assert "held" in run_cli("ps", home=home).stdout
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)
    assert json.loads(run_cli("ps", "--json", home=home).stdout) == []  # closed: not listed
    # a `run` going on is listed while it runs
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    runner = subprocess.Popen(
        [sys.executable, "-m", "localsym", "run", SMOL, "Write a long story.", "-n", "400", "-c", "512"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, rows = time.time() + 60, []
        while time.time() < deadline and not rows:
            rows = [r for r in json.loads(run_cli("ps", "--json", home=home).stdout) if r["kind"] == "run"]
        assert rows and rows[0]["pid"] == runner.pid and rows[0]["model"] == SMOL
        assert "localsym run" in rows[0]["command"]
    finally:
        runner.kill()
        runner.wait()
    # killed with -9: its record is not listed, and is cleaned up
    assert json.loads(run_cli("ps", "--json", home=home).stdout) == []
    assert not list((home / "data" / "run").glob("*.json"))


def test_log_file_not_the_terminal(home, capsys):
    from localsym import logs

    path = logs.setup(verbose=False)
    assert path == home / "logs" / "localsym.log"
    logging.getLogger("localsym.memory").warning("cold tier over budget")
    logging.getLogger("localsym.llama").warning(".")  # llama.cpp's load progress: dropped
    assert "cold tier over budget" in path.read_text() and "WARNING localsym.llama" not in path.read_text()
    assert capsys.readouterr().err == ""  # the chat draws on this terminal
    logs.setup(verbose=True)
    logging.getLogger("localsym.session").info("opened")
    assert "opened" in capsys.readouterr().err and "opened" in path.read_text()
    logs.setup(verbose=True, terminal=False)  # the chat: never stderr
    logging.getLogger("localsym.session").warning("in the chat")
    assert capsys.readouterr().err == "" and "in the chat" in path.read_text()
    for _ in range(1200):  # rotates at 1 MiB
        logging.getLogger("localsym.memory").warning("x" * 1000)
    assert (home / "logs" / "localsym.log.1").exists()
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_localsym", False)]:
        root.removeHandler(h)
        h.close()
    # llama.cpp's own log only with --llama-log
    r = run_cli("run", SMOL, "hi", "-n", "1", "-c", "256", home=home)
    assert r.returncode == 0 and r.stderr == ""
    r = run_cli("--llama-log", "run", SMOL, "hi", "-n", "1", "-c", "256", home=home)
    assert r.returncode == 0 and "llama" in r.stderr and "n_ctx" in r.stderr


def test_completion_scripts(home):
    for shell in ("bash", "zsh", "fish"):
        r = run_cli("completion", shell, home=home)
        assert r.returncode == 0
        for word in ("run", "chat", "show", "ps", "config", "completion", "top-k", "repeat-penalty", "template"):
            assert word in r.stdout, (shell, word)
    script = run_cli("completion", "bash", home=home).stdout
    bindir = str(Path(sys.executable).parent)  # `localsym` itself, for model names

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        call = f'COMP_WORDS=(localsym {line}); COMP_CWORD={len(words)}; _localsym; printf "%s\\n" "${{COMPREPLY[@]}}"'
        cmd = f"{script}\n{call}"
        env = dict(os.environ, LOCALSYM_HOME=str(home), PATH=f"{bindir}:{os.environ['PATH']}")
        out = subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert complete("ru") == ["run"]
    assert set(complete("run", "--top")) == {"--top-k", "--top-p"}
    assert complete("-v", "run", "-fa", "") == ["on", "off", "auto"]
    assert complete("run", "smol") == [SMOL]
    assert complete("show", "--lic") == ["--license"]
    assert complete("completion", "") == ["bash", "zsh", "fish"]


def test_run_pulls_a_catalog_model_first(home, gemma_path, tmp_path):
    # gemma's file is where a pull puts it but not recorded: `run` pulls (verifies, records) it
    os.link(gemma_path, home / "data" / "models" / gemma_path.name)
    r = run_cli("run", GEMMA, "The sky is", "--raw", "-n", "1", "-c", "256", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completion_tokens"] == 1
    assert GEMMA in [m["name"] for m in json.loads(run_cli("list", "--json", home=home).stdout)]
    # offline, with nothing to pull from: one line that says how to get it
    other = tmp_path / "offline"
    line = _one_line(_cli("run", GEMMA, "hi", home=other, env={"PIP_NO_INDEX": "1", "LOCALSYM_WHEELHOUSE": ""}))
    assert "not pulled yet" in line and "LOCALSYM_WHEELHOUSE" in line
    assert not list((other / "data" / "models").glob("*.gguf"))  # no partial file left behind


def test_run_without_a_prompt_opens_the_chat(home):
    """At a terminal, `run MODEL` alone is the chat on that model, in a session named after it."""
    m, s = pty.openpty()
    fcntl.ioctl(s, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    env = dict(os.environ, LOCALSYM_HOME=str(home), TERM="xterm-256color")
    p = subprocess.Popen(
        [sys.executable, "-m", "localsym", "run", SMOL, "-c", "512"],
        stdin=s,
        stdout=s,
        stderr=s,
        env=env,
        start_new_session=True,
    )
    os.close(s)
    seen = b""
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if select.select([m], [], [], 0.2)[0]:
                try:
                    seen += os.read(m, 1 << 16)
                except OSError:
                    break
            plain = re.sub(rb"\x1b\[[0-9;?]*[a-zA-Z]", b"", seen)
            if b"Quit" in plain and (home / "data" / "sessions" / SMOL / "session.db").exists():
                break
        assert (home / "data" / "sessions" / SMOL / "session.db").exists()
        os.write(m, b"\x11")  # ctrl+q
        p.wait(timeout=60)
        assert p.returncode == 0
        assert b"Traceback" not in seen
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(m)
    # without a terminal and without a prompt it stays an error, not a chat
    assert "no prompt" in _one_line(run_cli("run", SMOL, home=home, stdin=""))


def test_ps_lists_a_running_server(home):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, LOCALSYM_HOME=str(home))
    server = subprocess.Popen(
        [sys.executable, "-m", "localsym", "serve", "--port", str(port), "-c", "256"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline, rows = time.time() + 60, []
        while time.time() < deadline and not rows:
            rows = [r for r in json.loads(run_cli("ps", "--json", home=home).stdout) if r["kind"] == "serve"]
        assert rows and rows[0]["pid"] == server.pid
        assert rows[0]["name"] == f"127.0.0.1:{port}" and rows[0]["model"] == SMOL
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert json.loads(run_cli("ps", "--json", home=home).stdout) == []  # a clean stop removes its record
