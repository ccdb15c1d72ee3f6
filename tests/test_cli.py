"""The `localsym` command as a user runs it: real model, real process, real files."""

import json

from conftest import GEMMA, run_cli


def _one_clean_line(r):
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("localsym: error:")
    return lines[0]


def test_run_json_answers(home):
    r = run_cli("run", "smollm2-135m", "Name three colors.", "--json", "-n", "48", home=home)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"text", "prompt_tokens", "completion_tokens", "prefill_tok_s", "decode_tok_s", "stop_reason"}
    assert out["text"].strip() and out["completion_tokens"] > 0
    assert out["prompt_tokens"] > 5
    assert out["prefill_tok_s"] > 0 and out["decode_tok_s"] > 0


def test_run_streams_text(home):
    r = run_cli("run", "smollm2-135m", "What is 2+2? Answer with a number.", "-n", "16", home=home)
    assert r.returncode == 0, r.stderr
    assert "4" in r.stdout


def test_list_show_rm(home, tmp_path, smol_path):
    r = run_cli("list", "--json", home=home)
    assert [m["name"] for m in json.loads(r.stdout)] == ["smollm2-135m"]
    r = run_cli("show", "smollm2-135m", home=home)
    assert r.returncode == 0, r.stderr
    for word in ("llama", "Q4_1", "8192", "30", "23040", "chat template", "fit plan"):
        assert word in r.stdout
    r = run_cli("show", "smollm2-135m", "--vram", "8GiB", "--json", home=home)
    plan = json.loads(r.stdout)["plan"]
    assert plan["n_ctx"] == 8192 and plan["parts"]
    # a local GGUF is registered in place and removing it keeps the user's file
    mine = tmp_path / "My-Model.gguf"
    mine.write_bytes(smol_path.read_bytes())
    r = run_cli("pull", str(mine), home=home)
    assert r.returncode == 0, r.stderr
    assert "my-model" in run_cli("list", home=home).stdout
    assert run_cli("rm", "my-model", home=home).returncode == 0
    assert mine.exists()
    assert "my-model" not in run_cli("list", home=home).stdout


def test_pull_is_idempotent_and_offline_once_present(home):
    # No network needed: the file is present and verified, so pip is never called.
    r = run_cli("pull", "smollm2-135m", home=home)
    assert r.returncode == 0, r.stderr
    assert "sha256 b179c9523d0e" in r.stdout


def test_bad_input_is_one_line(home, tmp_path, smol_path):
    assert "unknown model 'nope'" in _one_clean_line(run_cli("run", "nope", "hi", home=home))
    assert "not pulled yet" in _one_clean_line(run_cli("show", GEMMA, home=home))  # `run` pulls (test_cli_habits)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(smol_path.read_bytes()[:40_000_000])
    assert "truncated" in _one_clean_line(run_cli("run", str(cut), "hi", home=home))
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model")
    assert "not a GGUF" in _one_clean_line(run_cli("run", str(junk), "hi", home=home))
    assert "unrecognized arguments" in _one_clean_line(run_cli("run", "smollm2-135m", "hi", "--bogus", home=home))
    assert "-c 2000000000 is too large" in _one_clean_line(
        run_cli("run", "smollm2-135m", "hi", "-c", "2000000000", home=home)
    )
    assert "lower -c" in _one_clean_line(run_cli("run", "smollm2-135m", "hi", "-c", "500000000", home=home))
    assert "no such file" in _one_clean_line(run_cli("pull", str(tmp_path / "missing.gguf"), home=home))
