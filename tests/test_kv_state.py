"""llama.cpp's sequence-state blob parsed into arrays and written back, on real models."""

import numpy as np
import pytest

from localsym.runtime import kv_state
from localsym.runtime.engine import Engine, RunOptions

TEXT = "The quick brown fox jumps over the lazy dog. " * 4


@pytest.fixture(scope="module")
def gemma_engine(gemma_path):
    eng = Engine(gemma_path, RunOptions(n_ctx=1024, n_seq_max=2, vram="cpu"))
    yield eng
    eng.close()


def _blob(eng, text=TEXT):
    eng.ctx.clear()
    toks = eng.model.tokenize(text)
    eng.ctx.decode(toks, 0, 0, logits="none")
    blob = eng.ctx.state_seq_get(0)
    return toks, blob


def test_smollm2_blob_roundtrip(smol_engine):
    toks, blob = _blob(smol_engine)
    st = kv_state.parse(blob)
    s = st.caches[0][0]
    info = smol_engine.info
    assert s.n_cells == len(toks) and s.n_layer == info.n_layer
    assert list(s.positions) == list(range(len(toks)))
    assert s.k[0].shape == (len(toks), info.n_head_kv * info.head_dim_k) and s.k[0].dtype == np.float16
    assert not s.v_trans  # flash attention on: V stored row per cell
    assert kv_state.write(st) == blob
    smol_engine.ctx.clear()


def test_transposed_v_roundtrip(smol_path):
    with Engine(smol_path, RunOptions(n_ctx=512, vram="cpu", flash_attn=False)) as eng:
        toks, blob = _blob(eng)
        st = kv_state.parse(blob)
        assert st.caches[0][0].v_trans
        assert st.caches[0][0].v[3].shape == (len(toks), eng.info.n_head_kv * eng.info.head_dim_v)
        assert kv_state.write(st) == blob


def test_gemma_iswa_has_two_caches(gemma_engine):
    toks, blob = _blob(gemma_engine)
    st = kv_state.parse(blob, n_caches=2)
    full, swa = st.caches[0][0], st.caches[1][0]
    assert full.n_layer + swa.n_layer == gemma_engine.info.n_layer
    assert full.n_cells == swa.n_cells == len(toks)
    assert kv_state.write(st) == blob
    with pytest.raises(kv_state.BlobError, match="trailing bytes"):
        kv_state.parse(blob, n_caches=1)  # read as one cache, the SWA half is left over


def test_edited_blob_is_accepted_and_changes_the_output(smol_engine):
    ctx = smol_engine.ctx
    toks, blob = _blob(smol_engine)
    q = smol_engine.model.tokenize(" The fox")
    ctx.decode(q, len(toks), 0)
    ref = ctx.logits()
    st = kv_state.parse(blob)  # zero-copy: arrays are read-only views of the blob
    stream = st.caches[0][0]
    stream.v = [np.zeros_like(v) for v in stream.v]  # values wiped: attention reads nothing
    ctx.clear()
    ctx.state_seq_set(0, kv_state.write(st))
    ctx.decode(q, len(toks), 0)
    assert not np.allclose(ctx.logits(), ref)
    ctx.clear()
    ctx.state_seq_set(0, blob)  # the original blob restores the original answer exactly
    ctx.decode(q, len(toks), 0)
    assert np.array_equal(ctx.logits(), ref)
    ctx.clear()


def test_damaged_and_mismatched_blobs_are_refused(smol_engine, smol_path):
    _, blob = _blob(smol_engine)
    with pytest.raises(kv_state.BlobError, match="truncated"):
        kv_state.parse(blob[:-100])
    with pytest.raises(kv_state.BlobError, match="magic"):
        kv_state.parse(b"\x00" * 8 + blob[8:])
    live = kv_state.parse(blob)
    with Engine(smol_path, RunOptions(n_ctx=512, vram="cpu", flash_attn=False)) as other:
        _, other_blob = _blob(other)
    with pytest.raises(kv_state.BlobError, match="-fa"):
        kv_state.check_compatible(kv_state.parse(other_blob), live)
    smol_engine.ctx.clear()
