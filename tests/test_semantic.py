"""The semantic signal: WordLlama's static embeddings read from its wheel (no network), the
question's asking words left out, scores taken above the median block, and a real SmolLM2
session finding code that shares no word with the question (the lexical signal finds
nothing there), chosen by "semantic"."""

from __future__ import annotations

import sqlite3

import numpy as np

from localsym.memory import semantic
from localsym.memory.lexical import LexicalIndex, query_terms
from localsym.runtime.engine import GenParams, RunOptions
from localsym.session import Session, SessionConfig

FILES = {
    "bytecode.py": "def dump_bytecode(self, f):\n    if self.code is None:\n"
    "        raise TypeError('can not dump code')\n    f.write(bc_magic)\n    marshal.dump(self.code, f)\n",
    "cookies.py": "def list_domains(self):\n    domains = []\n    for cookie in iter(self):\n"
    "        if cookie.domain not in domains:\n            domains.append(cookie.domain)\n    return domains\n",
    "colors.py": "def blend_rgb(a, b, t):\n    r = a[0] + (b[0] - a[0]) * t\n    g = a[1] + (b[1] - a[1]) * t\n"
    "    return (r, g, a[2])\n",
    "retry.py": "def backoff_delay(attempt, base=0.5, cap=30):\n    delay = base * 2 ** attempt\n"
    "    return min(cap, delay + random.random())\n",
    "paths.py": "def ensure_parent_dir(path):\n    parent = os.path.dirname(path)\n    if parent:\n"
    "        os.makedirs(parent, exist_ok=True)\n",
}
# questions that share no word with their code: BM25 finds nothing for either
ASKED = {
    "Which function saves compiled code into an open stream?": "bytecode.py",
    "How long should the program wait before trying again after a failure?": "retry.py",
}


def test_the_embedder_loads_from_the_wheel_and_gives_unit_vectors():
    v = semantic.vectors(["def dump_bytecode(self, f): marshal.dump(self.code, f)", "", "the weather is fine"])
    assert v is not None and v.shape == (3, semantic.DIM) and v.dtype == np.float16
    norms = np.linalg.norm(v.astype(np.float32), axis=1)
    assert np.allclose(norms[[0, 2]], 1.0, atol=1e-2) and norms[1] == 0  # no tokens: zeros


def test_the_question_keeps_what_it_is_about():
    q = "Which function in this code does the following: write the bytecode to a file? Answer with the function's name."
    assert semantic.question_text(q) == "write bytecode file"


def test_scores_are_the_cosine_above_the_median_block_on_a_fixed_scale():
    m = np.eye(5, semantic.DIM, dtype=np.float16)
    q = np.zeros(semantic.DIM, np.float32)
    q[2], q[0], q[1] = 0.9, 0.4, 0.17
    ids, s = semantic.scores(m, q)  # median 0.17: rows at or below it drop out
    assert ids.tolist() == [2, 0] and np.allclose(s, [1.0, 0.23 / semantic.STRONG], atol=1e-2)  # capped at 1
    assert semantic.scores(np.zeros((0, semantic.DIM), np.float16), q)[0].size == 0


def test_static_vectors_find_what_bm25_cannot():
    names = list(FILES)
    m = semantic.vectors([FILES[n] for n in names])
    assert m is not None
    lex = LexicalIndex(sqlite3.connect(":memory:"))
    for i, n in enumerate(names):
        lex.add(i, FILES[n], n)
    for q, want in ASKED.items():
        assert lex.search(query_terms(q), 3) == []
        qv = semantic.vectors([semantic.question_text(q)])
        assert qv is not None
        assert names[int(semantic.scores(m, qv[0])[0][0])] == want


def test_a_session_finds_code_by_meaning_and_says_so(home, tmp_path):
    """The second file asked about is loaded after the first question: its vectors, written
    as it was loaded, join those the first question read."""
    first, later = tmp_path / "first", tmp_path / "later"
    for name, text in FILES.items():
        folder = later if name == "retry.py" else first
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(text)
    cfg = SessionConfig(block_tokens=64, working_set_tokens=384, system="")
    with Session.open("sem", "smollm2-135m", RunOptions(n_ctx=2048, vram="cpu"), cfg) as s:
        s.load(str(first))
        for q, want in ASKED.items():
            if want == "retry.py":
                s.load(str(later))
            with s.ask(q, GenParams(max_tokens=4)) as turn:
                turn.text()
            chosen = [x for x in turn.stats.sources if x.get("signal") != "refresh"]
            best = max(chosen, key=lambda x: x["score"])
            assert best["path"].endswith(want) and best["signal"] == "semantic", chosen


# -- the code map: a code block's vector moved toward the sentences that describe such code -------------
def test_the_code_map_ships_and_maps_only_code_rows():
    w = semantic.code_map()
    assert w is not None and w.shape == (semantic.DIM, semantic.DIM) and w.dtype == np.float32
    rows = semantic.vectors(["def f(x):\n    return x + 1\n", "The meeting moved to Tuesday."])
    assert rows is not None
    m = semantic.matrix(rows, np.array([True, False]))
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-3)
    assert np.allclose(m[1], rows[1].astype(np.float32))  # prose keeps its own vector
    assert not np.allclose(m[0], rows[0].astype(np.float32), atol=1e-2)
    assert np.allclose(semantic.matrix(rows, np.zeros(2, bool)), rows.astype(np.float32))


def test_each_kind_is_scored_above_its_own_median():
    m = np.zeros((6, semantic.DIM), np.float32)
    m[:, 0] = [0.9, 0.5, 0.5, 0.3, 0.1, 0.1]  # code rows at 0.5 and up, prose at 0.1 and up
    q = np.zeros(semantic.DIM, np.float32)
    q[0] = 1.0
    code = np.array([True, True, True, False, False, False])
    ids, s = semantic.scores(m, q, code=code)
    # one median (0.4) would put the code rows' usual level above the prose's best; each
    # kind's own puts the best of each above its kind
    assert ids.tolist() == [0, 3] and np.allclose(s, [min(0.4 / semantic.STRONG, 1.0), 0.2 / semantic.STRONG])


def test_the_map_finds_a_package_it_never_saw_better(tmp_path, smol_path):
    """click is left out of the map's training (tools/train_code_map.py): its functions,
    docstrings removed and cut into localsym's blocks, asked about by their docstrings'
    first sentences (bench code's task), are ranked higher through the map than without."""
    import random

    from localsym.bench.code import prepare
    from localsym.chunking import chunk_file
    from localsym.session import Tokenizer

    with Tokenizer(str(smol_path)) as vocab:
        root, targets = prepare("click", tmp_path, 40000, lambda s: len(vocab.tokenize(s)))
        blocks: list[tuple[str, tuple[int, int], str]] = []
        for f in sorted(root.rglob("*.py")):
            name = str(f.relative_to(root))
            for c in chunk_file(f.read_text(encoding="utf-8"), name, vocab.tokenize, 256):
                assert c.lines is not None
                blocks.append((str(f.resolve()), c.lines, vocab.detokenize(list(c.tokens))))
    rows = semantic.vectors([b[2] for b in blocks])
    asked = random.Random(0).sample(targets, 30)
    q = semantic.vectors([semantic.question_text(t.sentence) for t in asked])
    assert rows is not None and q is not None

    def mean_rank(m: np.ndarray) -> float:
        ranks = []
        for t, qv in zip(asked, q.astype(np.float32)):
            sims = m @ qv
            lo, hi = t.lines
            good = [i for i, (path, (a, b), _) in enumerate(blocks) if path == t.path and a <= hi and lo <= b]
            ranks.append(min(int((sims > sims[i]).sum()) for i in good))
        return float(np.mean(1.0 / (1.0 + np.array(ranks))))

    plain = mean_rank(rows.astype(np.float32))
    mapped = mean_rank(semantic.matrix(rows, np.ones(len(rows), bool)))
    assert mapped > plain * 1.15, (plain, mapped)


def test_a_damaged_code_map_is_one_warning_and_plain_vectors(tmp_path, monkeypatch, caplog):
    """A truncated, foreign or wrong-version map file: the signal goes on with plain vectors."""
    good = semantic.CODE_MAP_FILE.read_bytes()
    bad = {
        "truncated": good[: len(good) // 2],
        "foreign": b"not an npz at all",
    }
    v2 = tmp_path / "v2.npz"
    np.savez(v2, w=np.eye(semantic.DIM, dtype=np.float16), meta=np.array('{"version": 999}'))
    bad["wrong version"] = v2.read_bytes()
    rows = semantic.vectors(["def f(x):\n    return x\n"])
    assert rows is not None
    for what, data in bad.items():
        f = tmp_path / f"{what}.npz"
        f.write_bytes(data)
        monkeypatch.setattr(semantic, "CODE_MAP_FILE", f)
        monkeypatch.setattr(semantic, "_CODE_MAP", semantic._Once(semantic._load_code_map, "off"))
        caplog.clear()
        assert semantic.code_map() is None, what
        assert semantic.code_map() is None and len(caplog.records) == 1, what  # said once
        assert np.allclose(semantic.matrix(rows, np.array([True])), rows.astype(np.float32)), what
