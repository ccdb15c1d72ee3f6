"""Exact key phrases, every block of a multi-value or multi-query question, and assignment
hops, on the real SmolLM2 tokenizer over real text (stdlib sources) with RULER-shaped
needles."""

from __future__ import annotations

import random

import numpy as np
import pytest

from localsym.bench.corpus import stdlib_text
from localsym.bench.ruler import NIAH_NEEDLE, NIAH_QUESTION, VT_QUESTION
from localsym.memory import retrieval
from localsym.memory.index_db import BlockRow
from localsym.memory.phrases import assigned_names, key_shaped, words
from localsym.memory.retrieval import Retriever
from localsym.runtime.bridge import Model

B = 64  # tokens a block


@pytest.fixture(scope="module")
def vocab(smol_path):
    m = Model(smol_path, vocab_only=True)
    yield m
    m.close()


def _piece(vocab):
    return lambda t: vocab.piece(t).decode("utf-8", "replace")


def _retriever(vocab, notes: list[str], n_pages: int = 24, seed: int = 0) -> tuple[Retriever, dict[str, int]]:
    """Pages of stdlib source (documents of a few blocks each) with each note its own
    document between them, as ``bench ruler`` lays them out; returns the note -> block map."""
    r = Retriever(piece=_piece(vocab), tokenize=vocab.tokenize)
    lines = stdlib_text(400_000).splitlines(keepends=True)
    pages = ["".join(lines[i * 40 : (i + 1) * 40]) for i in range(n_pages)]
    rng = random.Random(seed)
    at = sorted(rng.sample(range(n_pages), len(notes)))
    docs: list[tuple[str, str]] = []
    k = 0
    for i, page in enumerate(pages):
        while k < len(notes) and at[k] == i:
            docs.append((f"note-{k:02d}.txt", notes[k]))
            k += 1
        docs.append((f"stdlib-{i:04d}.py", page))
    where: dict[str, int] = {}
    b = 0
    for d, (source, text) in enumerate(docs):
        toks = vocab.tokenize(f"### {source}\n{text.rstrip()}\n")
        for j in range(0, len(toks), B):
            r.add(BlockRow(b, d, j // B, f"k{b}", 0, np.asarray(toks[j : j + B], np.int32), "file", source))
            if source.startswith("note-"):
                where[notes[int(source[5:7])]] = b
            b += 1
    return r, where


def _needles(rng: random.Random, keys: list[str]) -> list[tuple[str, str]]:
    return [(k, str(rng.randint(1_000_000, 9_999_999))) for k in keys]


def test_words_keys_and_assignments(vocab):
    toks = vocab.tokenize("What are the numbers for damp-ribbon and 68377 in VAR ESZYC?")
    ws = words(toks, _piece(vocab))
    texts = [w.text for w in ws]
    assert "damp-ribbon" in texts and "68377" in texts and "ESZYC" in texts
    w = next(w for w in ws if w.text == "damp-ribbon")
    assert vocab.detokenize(toks[w.start : w.end]).strip() == "damp-ribbon"
    assert [key_shaped(t) for t in ("damp-ribbon", "68377", "ESZYC", "What", "numbers", "123", "os.path")] == [
        True,
        True,
        True,
        False,
        False,
        False,
        True,
    ]
    assert assigned_names("VAR X2 = VAR X1") == ["X2", "X1"]
    assert assigned_names("VAR X1 = 12345") == ["X1"]
    assert assigned_names("    retry_delay: float = base_delay") == ["retry_delay", "base_delay"]
    assert assigned_names("if a == b:") == []


def test_multikey_picks_the_exact_key_and_leaves_the_lookalikes_out(vocab):
    rng = random.Random(1)
    pairs = _needles(rng, ["damp-ribbon", "damp-violin", "glossy-ribbon", "narrow-orchard"])
    notes = [NIAH_NEEDLE.format(key=k, value=v) for k, v in pairs]
    r, where = _retriever(vocab, notes)
    question = vocab.tokenize(NIAH_QUESTION.format(query="damp-ribbon"))
    chosen = r.select(question, budget_tokens=12 * B)
    keys = {c.key for c in chosen}
    asked = f"k{where[notes[0]]}"
    assert asked in keys and asked in r.last_needles
    assert chosen[-1].key == asked  # the document holding the needle comes last, nearest the question
    # the same-shaped needles of other keys (sharing a word of the key, too) lose
    assert not keys & {f"k{where[n]}" for n in notes[1:]}
    assert r.last_found.matched == {"damp-ribbon": 1}
    assert sum(c.n_tokens for c in chosen) <= 12 * B


def test_multivalue_and_multiquery_bring_every_block_holding_an_asked_key(vocab):
    rng = random.Random(2)
    # multi-value: four needles of one key; multi-query: four keys asked at once
    same = [NIAH_NEEDLE.format(key="brave-lantern", value=v) for _, v in _needles(rng, ["x"] * 4)]
    pairs = _needles(rng, ["calm-cello", "lucky-tunnel", "humble-fountain", "witty-feather"])
    many = [NIAH_NEEDLE.format(key=k, value=v) for k, v in pairs]
    r, where = _retriever(vocab, same + many, n_pages=40)
    budget = 10 * B  # room for ten of the ~60 blocks: the eight needles must all be in it
    chosen = r.select(vocab.tokenize(NIAH_QUESTION.format(query="brave-lantern")), budget)
    assert {f"k{where[n]}" for n in same} <= r.last_needles <= {c.key for c in chosen}
    assert not {c.key for c in chosen} & {f"k{where[n]}" for n in many}
    query = "calm-cello, lucky-tunnel, humble-fountain, and witty-feather"
    chosen = r.select(vocab.tokenize(NIAH_QUESTION.format(query=query)), budget)
    assert {f"k{where[n]}" for n in many} <= r.last_needles <= {c.key for c in chosen}
    assert not {c.key for c in chosen} & {f"k{where[n]}" for n in same}
    assert set(r.last_found.matched) == {"calm-cello", "lucky-tunnel", "humble-fountain", "witty-feather"}


def test_vt_hops_follow_the_chain_from_the_value(vocab):
    names = ["ESZYC", "IDPYO", "PUMZG", "DPAMN", "TYYAW"]
    chain = ["VAR ESZYC = 68377"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, 5)]
    # a second chain with another value: none of its names may come along
    other = ["VAR QWERT = 51234", "VAR ASDFG = VAR QWERT"]
    r, where = _retriever(vocab, chain + other, n_pages=30, seed=3)
    question = vocab.tokenize(VT_QUESTION.format(value="68377"))
    chosen = r.select(question, budget_tokens=8 * B)
    keys = {c.key for c in chosen}
    assert {f"k{where[c]}" for c in chain} <= r.last_needles <= keys
    assert not keys & {f"k{where[c]}" for c in other}
    assert sorted(r.last_found.hops.values()) == sorted(names[:4])  # each hop by the name that led to it


def test_hops_are_bounded(vocab, monkeypatch):
    names = [f"V{c}QZX" for c in "ABCDEFGHIJ"]
    chain = [f"VAR {names[0]} = 40961"] + [f"VAR {names[i]} = VAR {names[i - 1]}" for i in range(1, 10)]
    r, where = _retriever(vocab, chain, n_pages=30, seed=4)
    monkeypatch.setattr(retrieval, "HOP_ROUNDS", 3)
    found = r.find_needles(vocab.tokenize(VT_QUESTION.format(value="40961")))
    assert set(found.needles) == {where[c] for c in chain[:4]}  # the value's block, then three hops
    monkeypatch.setattr(retrieval, "HOP_ROUNDS", 6)
    monkeypatch.setattr(retrieval, "HOP_BLOCKS", 2)
    found = r.find_needles(vocab.tokenize(VT_QUESTION.format(value="40961")))
    assert len(found.hops) == 2


def test_a_phrase_is_found_only_as_a_whole_word(vocab):
    notes = ["The port is 48213.", "The other port is 482139.", "Call damp-ribbons now."]
    r, where = _retriever(vocab, notes, n_pages=6)
    found = {b for b, _ in r.find_phrase(vocab.tokenize(" 48213")[1:]) or ()}
    assert found == {where[notes[0]]}
    found = {b for b, _ in r.find_phrase(vocab.tokenize(" damp-ribbon")) or ()}
    assert found == set()
    # without keys found, the rare tokens pick the needles as before
    chosen = r.select(vocab.tokenize("Which port is given?"), budget_tokens=4 * B)
    assert chosen


def test_refresh_candidates_are_the_answers_new_keys(vocab):
    notes = ["The billing service is named ZORBLAX_7.", "ZORBLAX_7 listens on port 48213."]
    r, where = _retriever(vocab, notes, n_pages=20, seed=5)
    q = vocab.tokenize("Which service handles billing?")
    chosen = r.select(q, budget_tokens=6 * B)
    have = {c.key for c in chosen}
    assert f"k{where[notes[0]]}" in have
    answer = vocab.tokenize(" The billing service is ZORBLAX_7.")
    rows, found = r.more(q + answer, have)
    assert [row.key for row in rows][:1] == [f"k{where[notes[1]]}"]
    assert "ZORBLAX_7" in found.matched
    assert r.more(q, have)[0] == []  # the question's own keys bring nothing new


def test_a_key_cut_by_a_block_boundary_is_found_in_both_blocks(vocab):
    """The needle's key runs past its block's end (` damp-` | `ribbon`): it is found as
    a phrase across the two blocks of its document, not left to the rare tokens."""
    rng = random.Random(6)
    (key, value), (other, other_value) = _needles(rng, ["damp-ribbon", "damp-violin"])
    r, where = _retriever(vocab, [NIAH_NEEDLE.format(key=other, value=other_value)], n_pages=12, seed=6)
    run = vocab.tokenize(" " + key)
    needle = vocab.tokenize(" " + NIAH_NEEDLE.format(key=key, value=value))
    at = next(i for i in range(len(needle)) if needle[i : i + len(run)] == run)
    filler = vocab.tokenize(stdlib_text(20_000))
    toks = filler[: B - at - 2] + needle + filler[B : 2 * B]  # the cut falls after the key's second token
    assert toks[B - 2 : B + len(run) - 2] == run
    b0, doc = len(r.blocks), max(b.doc_id for b in r.blocks) + 1
    for j in range(0, len(toks), B):
        r.add(
            BlockRow(b0 + j // B, doc, j // B, f"k{b0 + j // B}", 0, np.asarray(toks[j : j + B], np.int32), "file", "x")
        )
    assert r.find_phrase(run) == [(b0, B - 2)]
    chosen = r.select(vocab.tokenize(NIAH_QUESTION.format(query=key)), budget_tokens=8 * B)
    assert {f"k{b0}", f"k{b0 + 1}"} <= r.last_needles <= {c.key for c in chosen}
    assert r.last_found.matched == {key: 1}
    assert f"k{where[NIAH_NEEDLE.format(key=other, value=other_value)]}" not in {c.key for c in chosen}
