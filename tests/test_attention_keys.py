"""Attention-native scoring against the real model: RoPE undone exactly as llama.cpp did
it, the probe reading post-RoPE tensors, keys stored with blocks and back after a restart."""

import numpy as np
import pytest

from localsym.memory.attention_keys import RopeSpec, block_keys, scores, unrope
from localsym.runtime import kv_state
from localsym.runtime.bridge import Context, Model


@pytest.fixture(scope="module")
def smol_model(smol_path):
    m = Model(smol_path)
    yield m
    m.close()


def _spec(model) -> RopeSpec:
    kind, n_rot, base = model.rope
    return RopeSpec(n_rot, base, kind == "neox")


def test_unrope_undoes_llama_cpp_rope(smol_model):
    """A lone token's keys depend on its position only through RoPE: rotated back, the
    keys at positions 0 and 300 agree to f16 precision."""
    m = smol_model
    assert m.rope == ("norm", 64, 100000.0)
    ctx = Context(m, 512, n_seq_max=2)
    tok = m.tokenize("hello")[0]
    ctx.decode([tok], 0, 0, logits="none")
    ctx.decode([tok], 300, 1, logits="none")
    k = [kv_state.parse(ctx.state_seq_get(s), 1).caches[0][0] for s in (0, 1)]
    ctx.close()
    spec = _spec(m)
    for layer in (3, 15, 29):
        a, b = (s.k[layer].reshape(1, m.n_head_kv, -1) for s in k)
        assert np.abs(a - b).max() > 0.05  # rotated differently
        ua, ub = unrope(a, [0], spec), unrope(b, [300], spec)
        assert np.abs(ua - ub).max() < 0.01 * max(1.0, np.abs(ua).max())


def test_neox_pairs_round_trip():
    spec = RopeSpec(8, 10000.0, neox=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 2, 8)).astype(np.float32)
    pos = np.arange(5) * 37
    # rotating forward is unrope with negated positions
    assert np.allclose(unrope(unrope(x, -pos, spec), pos, spec), x, atol=1e-5)
    assert not np.allclose(unrope(x, pos, spec), x)


def test_probe_sees_the_post_rope_tensors(smol_model):
    """llama.cpp names projection and rotated tensor alike (Kcur-L, Qcur-L): the last one
    seen is what the cache holds."""
    from localsym.memory.query_probe import QueryProbe

    m = smol_model
    toks = m.tokenize("def add(a, b):\n    return a + b\n")
    seen = {}
    ctx = Context(m, 256, observer=(lambda n: n == "Kcur-15", lambda ev: seen.__setitem__(ev.name, ev.read_f32())))
    ctx.decode(toks, 0, 0, logits="none")
    cached = kv_state.parse(ctx.state_seq_get(0), 1).caches[0][0].k[15]
    ctx.close()
    assert np.abs(seen["Kcur-15"].reshape(len(toks), -1) - cached).max() < 0.02
    probe = QueryProbe(m, [15, 22])
    qs, pos = probe.queries(toks)
    probe.close()
    assert [q.shape for q in qs] == [(len(toks), 9, 64)] * 2 and list(pos) == list(range(len(toks)))


def test_scores_pick_the_block_whose_keys_point_like_the_query():
    rng = np.random.default_rng(1)
    spec = RopeSpec(8, 10000.0, neox=False)
    pos = np.arange(32)
    target = rng.standard_normal(8).astype(np.float32)
    rows = [rng.standard_normal((32, 2 * 8)).astype(np.float32) for _ in range(6)]
    # block 4's head-0 keys lean towards target, each rotated at its own position
    lean = unrope(np.repeat(target[None, None, :], 32, axis=0), -pos, spec)[:, 0]
    rows[4][:, :8] += 2 * lean
    keys = np.stack([block_keys([r], pos, 2, spec) for r in rows])  # [blocks, 1, 2, reps, 8]
    query = np.zeros((1, 4, 8), np.float32)
    query[0, :2] = target  # the two query heads of KV group 0
    assert int(np.argmax(scores(keys, query))) == 4


def test_a_session_keeps_block_keys_across_restarts(home, smol_path):
    from localsym.runtime.engine import RunOptions
    from localsym.session import Session, SessionConfig

    cfg = SessionConfig(block_tokens=64, system="")
    text = "\n".join(f"def helper_{i}(x):\n    return x * {i}\n" for i in range(40))
    with Session.open("attn", str(smol_path), RunOptions(n_ctx=1024, vram="cpu"), cfg) as s:
        s.ingest_text(text, "helpers.py", "file")
        n = len(s.working.selector.blocks)
        assert n >= 3 and s.working.selector.has_keys
        before = [b.attn for b in s.working.selector.blocks]
        query = s.working.attn.query(s.engine.model.tokenize("return x * 7"))
        assert query.shape == (2, 9, 64)
    with Session.open("attn", str(smol_path), RunOptions(n_ctx=1024, vram="cpu"), cfg) as s:
        assert [b.attn for b in s.working.selector.blocks] == before  # from the index, not recomputed
        s.working.selector.weights["attention"] = 0.15  # off by default (fusion.WEIGHTS): on, it probes
        turn = s.ask("What does helper_7 return?")
        answer = turn.text()
        assert turn.stats.probe_ms > 0 and answer
    with Session.open("attn-2", str(smol_path), RunOptions(n_ctx=1024, vram="cpu"), cfg) as s:
        rep = s.ingest_text(text, "helpers.py", "file")
        # the same content in another session: blocks and their keys come from the model's
        # shared stores, identical
        assert rep.reused_blocks == n and rep.computed_blocks == 0
        assert [b.attn for b in s.working.selector.blocks] == before
