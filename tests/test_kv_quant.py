"""Per-block KV formats and the adaptive choice, on real KV from SmolLM2."""

import numpy as np
import pytest

from localsym.memory import kv_quant as kq
from localsym.runtime import kv_state


@pytest.fixture(scope="module")
def block(smol_engine):
    """One 128-token block of real K/V (all layers) and what the model said after it."""
    ctx, m = smol_engine.ctx, smol_engine.model
    text = open(__import__("textwrap").__file__).read()
    toks = m.tokenize(text)[:128]
    ctx.clear()
    ctx.decode(toks, 0, 0, logits="none")
    blob = ctx.state_seq_get(0)
    ctx.clear()
    return toks, blob, kv_state.parse(blob)


def test_formats_sizes_and_errors_order(block):
    _, _, st = block
    k = st.caches[0][0].k[5].astype(np.float32)
    v = st.caches[0][0].v[5].astype(np.float32)
    cells, width = k.shape
    sizes, kerr, verr = {}, {}, {}
    for fmt in ("q8", "q4", "q3", "q2"):
        kt, vt = kq.quantize(k, fmt), kq.quantize(v, fmt, per_channel=False)
        assert kq.dequantize(kt).shape == k.shape
        sizes[fmt] = kt.nbytes + vt.nbytes
        kerr[fmt] = kq.k_error(k, kq.dequantize(kt), 3)
        verr[fmt] = kq.v_error(v, kq.dequantize(vt))
    f16 = 2 * k.size * 2
    assert f16 / sizes["q8"] > 1.8 and f16 / sizes["q4"] > 3.2 and f16 / sizes["q2"] > 5.5
    assert kerr["q8"] < kerr["q4"] < kerr["q3"] < kerr["q2"]
    assert verr["q8"] < verr["q4"] < verr["q3"] < verr["q2"]
    t = kq.quantize(k, "f16")
    assert np.array_equal(kq.dequantize(t), k)  # K came from an f16 cache: f16 is exact


def test_adaptive_takes_the_cheapest_format_under_threshold(block, smol_engine):
    _, _, st = block
    s = st.caches[0][0]
    ks, vs = s.k[:4], s.v[:4]
    loose = kq.quantize_layers(ks, vs, kq.QuantPolicy(k_threshold=1e9, v_threshold=1e9), 3)
    assert loose.mix() == {"K:q2": 4, "V:q2": 4}
    strict = kq.quantize_layers(ks, vs, kq.QuantPolicy(k_threshold=0, v_threshold=0), 3)
    assert strict.mix() == {"K:f16": 4, "V:f16": 4}
    mid = kq.quantize_layers(ks, vs, kq.QuantPolicy(), 3)
    for c in mid.choices:
        assert c.k_err <= kq.QuantPolicy().k_threshold and c.v_err <= kq.QuantPolicy().v_threshold
    pinned = kq.quantize_layers(ks, vs, kq.QuantPolicy(k_threshold=1e9, v_threshold=1e9), 3, floor="q8")
    assert pinned.mix() == {"K:q8": 4, "V:q8": 4}  # a needle block stays at Q8 or better
    warm = kq.quantize_layers(ks, vs, kq.WARM_POLICY, 3)
    assert set(warm.mix()) <= {"K:q8", "K:q4", "K:f16", "V:q8", "V:q4", "V:f16"}


def test_warm_from_the_cold_trials_matches_choosing_it_alone(block, smol_engine):
    _, _, st = block
    s = st.caches[0][0]
    for floor in (None, "q8"):
        cold, warm = kq.quantize_tiers(s.k, s.v, (kq.COLD_POLICY, kq.WARM_POLICY), 3, floor)
        assert cold.mix() == kq.quantize_layers(s.k, s.v, kq.COLD_POLICY, 3, floor).mix()
        alone = kq.quantize_layers(s.k, s.v, kq.WARM_POLICY, 3, floor)
        assert [(c.k.fmt, c.v.fmt) for c in warm.choices] == [(c.k.fmt, c.v.fmt) for c in alone.choices]
        for c, a, k, v in zip(warm.choices, alone.choices, s.k, s.v):
            assert np.array_equal(kq.dequantize(c.k), kq.dequantize(a.k))
            assert np.array_equal(kq.dequantize(c.v), kq.dequantize(a.v))
            # the reported error bounds the real one
            assert kq.k_error(np.asarray(k, np.float32), kq.dequantize(c.k), 3) <= c.k_err + 1e-6
            assert kq.v_error(np.asarray(v, np.float32), kq.dequantize(c.v)) <= c.v_err + 1e-6


def test_restored_blocks_predict_like_f16(block, smol_engine):
    """The next 64 tokens of the file, teacher-forced after the block is restored: Q8 agrees
    with F16 on nearly every greedy choice, Q2 on fewer."""
    toks, blob, st = block
    ctx, m = smol_engine.ctx, smol_engine.model
    follow = m.tokenize(open(__import__("textwrap").__file__).read())[128:192]
    s = st.caches[0][0]

    def choices(b):
        ctx.clear()
        ctx.state_seq_set(0, b)
        ctx.decode(follow, len(toks), 0, logits="all")
        out = ctx.logits_all(len(follow)).argmax(axis=1)
        ctx.clear()
        return out

    def through(fmt):
        rep = kq.quantize_layers(s.k, s.v, kq.QuantPolicy(fixed=fmt), 3)
        ks = [kq.dequantize(c.k) for c in rep.choices]
        vs = [kq.dequantize(c.v) for c in rep.choices]
        stream = kv_state.KVStream(s.positions, s.seq_ids, s.v_trans, s.k_types, s.v_types, ks, vs)
        return kv_state.write(kv_state.SeqState(st.seq_id, [[stream]]))

    ref = choices(blob)
    agree = {fmt: float(np.mean(choices(through(fmt)) == ref)) for fmt in ("q8", "q2")}
    assert agree["q8"] >= 0.9
    assert agree["q2"] < agree["q8"]


def test_needle_like_text_is_pinned_and_plain_code_is_not():
    from localsym.memory.pinning import needle_like

    for text in ('API_KEY = "sk-9fQ2xLp04Zt"', 'TOKEN = "zT0YQOaN"', "the pass key is 68231", "KX-4471-QZ"):
        assert needle_like(text), text
    for text in ("def sha256(data): return utf8_decode(x)", "for i in range(10):", "version 3.11.4",
                 "class HTTPServer(BaseHTTPRequestHandler):", "x = 0x7fffffff"):
        assert not needle_like(text), text
