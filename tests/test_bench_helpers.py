"""Pure helpers of the benchmarks: the needle haystack's pages, the heatmap PNG, bench quant's sweep
and its scores."""

import struct
import zlib

import numpy as np
import pytest

from localsym.bench.heatmap import write_png
from localsym.bench.needle import _pages
from localsym.bench.quant import _pairs, scores
from localsym.errors import LocalsymError


def test_needle_pages_keep_their_boundaries_whatever_the_depth():
    lines = [(f"x_{i} = {i}\n", 5) for i in range(100)]
    needle = 'SERVICE_TOKEN = "abc"\n'
    a = _pages(lines, 400, 0.1, needle, page=50)
    b = _pages(lines, 400, 0.9, needle, page=50)
    assert len(a) == len(b) == 8
    assert sum(needle in p for p in a) == 1 and needle in a[0] and needle in b[-1]
    assert a[1:-1] == b[1:-1]  # pages without the needle are identical: their blocks are reused
    assert a[0].replace(needle, "") == b[0] and b[-1].replace(needle, "") == a[-1]
    assert "".join(a).replace(needle, "") == "".join(b).replace(needle, "")


def test_heatmap_png_is_valid(tmp_path):
    p = tmp_path / "h.png"
    write_png(p, [[1.0, 0.0], [None, 0.5]], cell=4)
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", data[16:24])
    assert (w, h) == (8, 8)
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == h * (1 + 3 * w)


def test_quant_sweep_pairs_parse_and_reject_junk_in_one_line():
    assert _pairs(None) == [] and _pairs("") == []
    assert _pairs("1.2/0.22, 2/0.3,") == [(1.2, 0.22), (2.0, 0.3)]
    for bad in ("1.2", "1/2/3", "a/b"):
        with pytest.raises(LocalsymError, match="K/V threshold pairs"):
            _pairs(bad)


def test_quant_scores_nll_and_kl_divergence_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(130, 50))  # more rows than one 64-row chunk of the KL sum
    tokens = list(rng.integers(0, 50, 131))

    def log_softmax(x):
        return (x - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True)) - x.max(1, keepdims=True)).astype(
            np.float32
        )

    base, other = log_softmax(logits), log_softmax(logits + rng.normal(scale=0.3, size=logits.shape))
    nll, kl = scores(base, tokens, None)
    assert kl == 0.0 and nll == pytest.approx(-sum(float(base[i, tokens[i + 1]]) for i in range(130)), rel=1e-6)
    assert scores(base, tokens, base)[1] == pytest.approx(0.0, abs=1e-4)  # a distribution is 0 from itself
    want = float((np.exp(base.astype(np.float64)) * (base - other)).sum())
    assert scores(other, tokens, base)[1] == pytest.approx(want, rel=1e-5) and want > 0
