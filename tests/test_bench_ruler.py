"""bench ruler: its task generators (deterministic, each needle once, answers derivable from
the text), its scorer, its page layout (haystack pages identical across tasks and trials),
and one tiny end-to-end run on SmolLM2."""

from __future__ import annotations

import argparse
import json
import os
import random
import re

import pytest

from localsym.bench.ruler import (
    NEEDLES,
    TASKS,
    VT_HOPS,
    Instance,
    flat,
    make_cwe,
    make_niah,
    make_vt,
    parse_lengths,
    prompt_of,
    score,
)

PAGES = [f"def f{i}(x):\n    return x + {i}\n" for i in range(12)]
WORDS = [f"w{a}{b}" for a in "abcdefghij" for b in "abcdefghijklmnopqrst"]  # 200 words


def _make(task: str, seed: int) -> Instance:
    rng = random.Random(seed)
    if task == "vt":
        return make_vt(rng, len(PAGES))
    if task == "cwe":
        return make_cwe(rng, WORDS, 900, 50)
    return make_niah(task, rng, len(PAGES))


@pytest.mark.parametrize("task", TASKS)
def test_generators_are_deterministic_in_their_seed(task):
    a, b, c = _make(task, 7), _make(task, 7), _make(task, 8)
    assert a == b
    assert a != c


@pytest.mark.parametrize("task", [t for t in TASKS if t.startswith("niah")])
def test_niah_needles_appear_once_and_answer_the_question(task):
    inst = _make(task, 3)
    text = flat(inst.documents(PAGES))
    needles = re.findall(r"One of the special magic numbers for ([\w-]+) is: (\d+)\.", text)
    assert len(needles) == (1 if task == "niah_single" else NEEDLES)
    for _, t in inst.inserts:
        assert text.count(t) == 1
    asked = re.search(r"numbers for (.+) mentioned", inst.question).group(1)
    keys = re.split(r", and |, ", asked)
    # the answer is exactly the values of the asked keys, derivable from the text alone
    assert sorted(inst.refs) == sorted(v for k, v in needles if k in keys)
    # the needles it needs: multikey's distractors are not among them (a working set that
    # leaves them out has not missed a needle)
    assert len(inst.wanted()) == (1 if task in ("niah_single", "niah_multikey") else NEEDLES)
    if task == "niah_multikey":
        assert len(keys) == 1 and len({k for k, _ in needles}) == NEEDLES  # distractors differ in key only
    if task == "niah_multivalue":
        assert len(keys) == 1 and len(inst.refs) == NEEDLES
    if task == "niah_multiquery":
        assert len(keys) == NEEDLES and len(inst.refs) == NEEDLES
    # the haystack pages are untouched and in order: their blocks are the same in every trial
    assert [t for s, t in inst.documents(PAGES) if s.startswith("stdlib-")] == PAGES


def test_vt_chain_resolves_to_the_asked_value():
    inst = _make("vt", 5)
    text = flat(inst.documents(PAGES))
    bound: dict[str, str] = {}
    for name, rhs in re.findall(r"VAR (\w+) = (VAR \w+|\d+)", text):  # in text order
        bound[name] = bound[rhs[4:]] if rhs.startswith("VAR ") else rhs
    value = re.search(r"value (\d+)", inst.question).group(1)
    assert sorted(n for n, v in bound.items() if v == value) == sorted(inst.refs)
    assert len(inst.refs) == VT_HOPS + 1
    assert [a for a, _ in inst.inserts] == sorted(a for a, _ in inst.inserts)


def test_cwe_common_words_are_the_most_frequent():
    inst = _make("cwe", 2)
    assert inst.pages is not None
    words = re.findall(r"\d+\. (\w+)", " ".join(inst.pages))
    counts: dict[str, int] = {}
    for w in words:
        counts[w] = counts.get(w, 0) + 1
    top = sorted(counts, key=lambda w: -counts[w])[:10]
    assert sorted(top) == sorted(inst.refs)
    assert min(counts[w] for w in inst.refs) > max(c for w, c in counts.items() if w not in inst.refs)
    numbers = [int(n) for n in re.findall(r"(\d+)\. ", " ".join(inst.pages))]
    assert numbers == list(range(1, len(words) + 1))


def test_score_is_recall_of_whole_words():
    assert score("The numbers are 1234567 and 7654321.", ["1234567", "7654321"]) == 1.0
    assert score("It is 1234567.", ["1234567", "7654321"]) == 0.5
    assert score("12345678", ["1234567"]) == 0.0  # a longer number is not the value
    assert score("abcde, FGHIJ", ["ABCDE", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert score("", ["x"]) == 0.0


def test_lengths_and_prompt_form():
    assert parse_lengths("1x,4x,16x", 8192) == [("1x", 8192), ("4x", 32768), ("16x", 131072)]
    assert parse_lengths("2048,32k", 8192) == [("2048", 2048), ("32k", 32768)]
    inst = _make("niah_single", 1)
    chat, raw = prompt_of(inst, inst.documents(PAGES), False), prompt_of(inst, inst.documents(PAGES), True)
    assert chat.startswith("### task.txt\n") and chat.endswith(inst.question)
    assert raw == chat + inst.answer_prefix


@pytest.mark.skipif(
    not os.environ.get("LOCALSYM_RULER_E2E"),
    reason="about 8 minutes on 2 busy cores (the raw model at SmolLM2's native 8K context): LOCALSYM_RULER_E2E=1",
)
def test_end_to_end_tiny(home, tmp_path, capsys):
    from localsym.bench import ruler

    args = argparse.Namespace(
        model="smollm2-135m",
        tasks="niah_single",
        lengths="2048",
        trials=1,
        baseline_trials=None,
        page=512,
        block=128,
        hot=1024,
        warm_mb=64,
        vram="cpu",
        seed=0,
        heatmap=str(tmp_path / "h.png"),
        threads=None,
        json=True,
        out=None,
    )
    assert ruler.run(args) == 0
    r = json.loads(capsys.readouterr().out)
    cell = r["per_task"]["niah_single"]["2048"]
    assert set(cell) >= {"accuracy", "baseline_accuracy", "trials"} and cell["trials"] == 1
    assert 0.0 <= cell["accuracy"] <= 1.0 and 0.0 <= cell["baseline_accuracy"] <= 1.0
    t = r["per_trial"][0]
    assert t["computed_blocks"] > 0 and t["answer"] is not None
    assert (tmp_path / "h.png").read_bytes().startswith(b"\x89PNG")
