"""Per-block KV formats, the closed-form error estimates and the adaptive choice, on real
KV from SmolLM2: one block sealed and written back as the tiers do."""

import numpy as np
import pytest

from kernels_numba import kv_seal
from localsym.memory import kv_quant as kq
from localsym.memory.encoded_block import EncodedBlock
from localsym.runtime import kv_state


@pytest.fixture(scope="module")
def block(smol_engine):
    """One 128-token block of real K/V (all layers), at positions 128.. after real text."""
    ctx, m = smol_engine.ctx, smol_engine.model
    toks = m.tokenize(open(__import__("textwrap").__file__).read())[:256]
    ctx.clear()
    ctx.decode(toks, 0, 0, logits="none")
    ctx.seq_cp(0, 1, 128, 256)
    blob = ctx.state_seq_get(1)
    ctx.clear()
    return toks, blob, kv_state.parse(blob)


def _back(eb: EncodedBlock, pos0: int = 128) -> kv_state.KVStream:
    return kv_state.parse(eb.to_blob(pos0, 1)).caches[0][0]


def test_formats_sizes_and_measured_errors_order(block):
    _, blob, st = block
    s = st.caches[0][0]
    sizes, kerr, verr = {}, {}, {}
    for fmt in ("f16", "q8", "q4", "q3", "q2"):
        eb = EncodedBlock.seal(st, kq.QuantPolicy(fixed=fmt), 3)
        sizes[fmt] = eb.nbytes
        b = _back(eb)
        kerr[fmt] = np.mean(
            [kq.k_error(np.asarray(a, np.float32), np.asarray(c, np.float32), 3) for a, c in zip(s.k, b.k)]
        )
        verr[fmt] = np.mean(
            [kq.v_error(np.asarray(a, np.float32), np.asarray(c, np.float32)) for a, c in zip(s.v, b.v)]
        )
        if fmt == "f16":
            assert bytes(eb.to_blob(128, 1)) == bytes(blob)  # f16 is exact, layout and all
    f16 = sizes["f16"]
    assert f16 / sizes["q8"] > 1.8 and f16 / sizes["q4"] > 3.2 and f16 / sizes["q2"] > 5.5
    assert kerr["f16"] == 0 and kerr["q8"] < kerr["q4"] < kerr["q3"] < kerr["q2"]
    assert verr["f16"] == 0 and verr["q8"] < verr["q4"] < verr["q3"] < verr["q2"]


def test_closed_form_estimates_track_the_measured_errors(block):
    """The estimates from one pass of group ranges stay within 25% of the errors measured by
    encoding and decoding each layer (per layer; mean within 10%)."""
    _, _, st = block
    s = st.caches[0][0]
    k3 = kv_state.stacked(s.k)[0][2].view(np.uint16)
    v3 = kv_state.stacked(s.v)[0][2].view(np.uint16)
    cal = (kq.K_CALIBRATION["per_channel"], kq.K_CALIBRATION["q8"])
    no_q4 = np.array([2, 3, 8, 16], np.uint8)  # so that Q8 is estimated on every layer
    col = {"q2": 0, "q3": 1, "q4": 2, "q8": 3}
    kerr = kv_seal.seal(k3, no_q4, False, 1.0, True, 3, cal).errors
    verr = kv_seal.seal(v3, no_q4, False, 1.0, False, 3, cal).errors
    kest = {f: kerr[:, c] for f, c in col.items()}
    vest = {f: verr[:, c] for f, c in col.items()}
    for fmt in ("q8", "q4", "q2"):
        b = _back(EncodedBlock.seal(st, kq.QuantPolicy(fixed=fmt), 3))
        km = np.array([kq.k_error(np.asarray(a, np.float32), np.asarray(c, np.float32), 3) for a, c in zip(s.k, b.k)])
        vm = np.array([kq.v_error(np.asarray(a, np.float32), np.asarray(c, np.float32)) for a, c in zip(s.v, b.v)])
        for est, meas in ((kest[fmt], km), (vest[fmt], vm)):
            ratio = est / meas
            assert 0.9 < ratio.mean() < 1.1, (fmt, ratio.mean())
            assert np.all((ratio > 0.75) & (ratio < 1.25)), (fmt, ratio.min(), ratio.max())


def test_adaptive_takes_the_cheapest_format_under_threshold(block):
    _, _, st = block
    s = st.caches[0][0]
    n = len(s.k)
    loose = EncodedBlock.seal(st, kq.QuantPolicy(k_threshold=1e9, v_threshold=1e9), 3)
    assert loose.mix == {"K:q2": n, "V:q2": n}
    strict = EncodedBlock.seal(st, kq.QuantPolicy(k_threshold=0, v_threshold=0), 3)
    assert strict.mix == {"K:f16": n, "V:f16": n}
    pinned = EncodedBlock.seal(st, kq.QuantPolicy(k_threshold=1e9, v_threshold=1e9), 3, floor="q8")
    assert pinned.mix == {"K:q8": n, "V:q8": n}  # a needle block stays at Q8 or better
    pol = kq.QuantPolicy()
    mid = EncodedBlock.seal(st, pol, 3)
    b = _back(mid)
    # what it chose stays under the thresholds when measured (with the estimate's slack)
    for a, c, f in zip(s.v, b.v, mid.streams[0][0].v.formats()):
        assert kq.v_error(np.asarray(a, np.float32), np.asarray(c, np.float32)) <= pol.v_threshold * 1.1, f
    for a, c in zip(s.k, b.k):
        assert kq.k_error(np.asarray(a, np.float32), np.asarray(c, np.float32), 3) <= pol.k_threshold * 1.25


def test_block_file_roundtrip_and_damage(block, tmp_path):
    from localsym.memory.container import CorruptFile

    _, _, st = block
    eb = EncodedBlock.seal(st, kq.QuantPolicy(), 3)
    p = tmp_path / "b.lsb"
    eb.save(p, {"key": "k1"})
    back, meta = EncodedBlock.load(p)
    assert meta["key"] == "k1" and back.mix == eb.mix
    assert bytes(back.to_blob(128, 1)) == bytes(eb.to_blob(128, 1))
    data = p.read_bytes()
    head = data.index(b'"dtype"')
    for where in (head + 10, len(data) // 2, len(data) - 1):  # the header's array table, the payload
        bad = bytearray(data)
        bad[where] ^= 0x01
        p.write_bytes(bytes(bad))
        with pytest.raises(CorruptFile):
            EncodedBlock.load(p)
    p.write_bytes(data[: len(data) - 100])
    with pytest.raises(CorruptFile):
        EncodedBlock.load(p)


def test_restored_blocks_predict_like_f16(block, smol_engine):
    """The next 64 tokens of the file, teacher-forced after the two blocks are back: Q8
    agrees with F16 on nearly every greedy choice, Q2 on fewer."""
    toks, _, _ = block
    ctx, m = smol_engine.ctx, smol_engine.model
    follow = m.tokenize(open(__import__("textwrap").__file__).read())[256:320]
    ctx.clear()
    ctx.decode(toks, 0, 0, logits="none")
    full = kv_state.parse(ctx.state_seq_get(0))

    def choices(blob):
        ctx.clear()
        ctx.state_seq_set(0, blob)
        ctx.decode(follow, len(toks), 0, logits="all")
        out = ctx.logits_all(len(follow)).argmax(axis=1)
        ctx.clear()
        return out

    ref = choices(kv_state.write(full))
    agree = {
        fmt: float(np.mean(choices(EncodedBlock.seal(full, kq.QuantPolicy(fixed=fmt), 3).to_blob(0, 0)) == ref))
        for fmt in ("q8", "q2")
    }
    assert agree["q8"] >= 0.9
    assert agree["q2"] < agree["q8"]


def test_needle_like_text_is_pinned_and_plain_code_is_not():
    from localsym.memory.pinning import needle_like

    for text in ('API_KEY = "sk-9fQ2xLp04Zt"', 'TOKEN = "zT0YQOaN"', "the pass key is 68231", "KX-4471-QZ"):
        assert needle_like(text), text
    for text in (
        "def sha256(data): return utf8_decode(x)",
        "for i in range(10):",
        "version 3.11.4",
        "class HTTPServer(BaseHTTPRequestHandler):",
        "x = 0x7fffffff",
    ):
        assert not needle_like(text), text
