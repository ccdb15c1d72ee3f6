"""Block selection: the pointer index finds needles; sketches and LSH rank the rest."""

import numpy as np

from localsym.memory.index_db import BlockRow
from localsym.memory.retrieval import Retriever, SketchIndex


def _corpus(n=300, L=64, seed=0):
    rng = np.random.default_rng(seed)
    vocab = 49152
    p = 1.0 / np.arange(1, vocab + 1)
    p /= p.sum()
    return [rng.choice(vocab, size=L, p=p).astype(np.int32) for _ in range(n)]


def _needle_retriever(source: str) -> Retriever:
    blocks = _corpus()
    needle = blocks[123].copy()
    needle[10:14] = [40001, 40002, 40003, 40004]  # an identifier nobody else uses
    blocks[123] = needle
    r = Retriever()
    for i, b in enumerate(blocks):
        r.add(BlockRow(i, 0, i, f"k{i}", 0, b, "file", source))
    return r


def test_needle_block_is_selected_and_marked():
    r = _needle_retriever("x.py")
    chosen = r.select([40002, 40003, 1, 2, 3], budget_tokens=4 * 64)
    assert {123, 124} <= {c.id for c in chosen}
    assert r.last_needles == {"k123", "k124"}  # the needle's block and the next of its document
    assert [c.id for c in chosen] == sorted(c.id for c in chosen)  # code keeps its order
    assert sum(c.n_tokens for c in chosen) <= 4 * 64
    assert r.last_ms < 1000


def test_in_prose_the_needle_comes_last_and_the_rest_by_score():
    """A page of prose stands alone: its best passage sits nearest the question, the needle
    and the block it runs on into last of all, in their own order."""
    r = _needle_retriever("notes.txt")
    chosen = [c.id for c in r.select([40002, 40003, 1, 2, 3], budget_tokens=4 * 64)]
    assert chosen[-2:] == [123, 124]
    rest = chosen[:-2]
    scores = [r.last_fused.scores.get(b, 0.0) for b in rest]
    assert rest and scores == sorted(scores)
    # without a needle: several blocks of one document, by score in prose; in code in their
    # order but the best block last of all (nearest the question)
    for source in ("notes.txt", "x.py"):
        r = _needle_retriever(source)
        ids = [c.id for c in r.select([5, 9, 17, 33, 65], budget_tokens=8 * 64)]
        assert len(ids) >= 3
        if source == "x.py":
            best = max(ids, key=lambda b: r.last_fused.scores[b])
            assert ids[-1] == best and ids[:-1] == sorted(ids[:-1]) and ids != sorted(ids)
        else:
            scores = [r.last_fused.scores[b] for b in ids]
            assert scores == sorted(scores) and ids != sorted(ids)


def test_lsh_agrees_with_brute_force_on_near_duplicates():
    blocks = _corpus(400, 64, 1)
    idx = SketchIndex(dim=256, tables=12, bits=8)
    for b in blocks:
        idx.add(b)
    agree = []
    for i in range(0, 400, 40):
        q = idx.sketch(blocks[i][:48])  # three quarters of a block
        top_b, _ = idx.brute(q, 4)
        top_l, _ = idx.lsh(q, 4)
        assert int(top_b[0]) == i
        agree.append(int(top_l[0]) == i)
    assert np.mean(agree) >= 0.9
