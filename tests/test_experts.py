"""MoE routing: the real eval-callback path on a tiny MoE GGUF, predictors against known
Markov structure, cache policies, prefetch ranges."""

from pathlib import Path

import numpy as np
import pytest

from localsym.experts import cache_sim as cs
from localsym.experts.predictor import CoFiringPredictor, MarkovPredictor, OraclePredictor
from localsym.experts.prefetch import ExpertFileMap, Prefetcher
from localsym.experts.tiny_moe import build
from localsym.experts.traces import MarkovSource, record


@pytest.fixture(scope="module")
def tiny_moe(tmp_path_factory, smol_path) -> Path:
    return build(tmp_path_factory.mktemp("moe") / "tiny-moe.gguf", smol_path)


def test_routing_is_recorded_through_the_eval_callback(tiny_moe):
    trace = record(tiny_moe, "def add(a, b):\n    return a + b\n", n_decode=6, n_ctx=256)
    n_prompt = len(trace) - 6
    assert trace.shape[1:] == (4, 2) and n_prompt > 5
    seen = trace[trace >= 0]
    assert seen.min() >= 0 and seen.max() < 8
    for row in trace:
        for layer in row:
            if layer[0] >= 0:
                assert layer[0] != layer[1]  # top-2: two distinct experts
    # prompt tokens: every layer but the last (llama.cpp keeps only the output row there)
    assert (trace[: n_prompt - 1, :3] >= 0).all() and (trace[: n_prompt - 1, 3] == -1).all()
    assert (trace[n_prompt - 1 :] >= 0).all()  # decoded tokens: every layer


def test_compiled_tap_reads_what_a_python_observer_reads(tiny_moe):
    """The tap reads ggml_tensor fields at fixed offsets from compiled code: check it against
    the plain Python eval callback, over several llama_decode calls and ubatches."""
    from localsym.runtime.bridge import Context, Model, RoutingTap

    model = Model(tiny_moe)
    toks = model.tokenize("def add(a, b):\n    return a + b\n" * 3)
    calls: list[list[np.ndarray]] = []
    seen: dict[int, list[np.ndarray]] = {}

    def handle(ev):
        seen.setdefault(int(ev.name.rsplit("-", 1)[1]), []).append(ev.read_int32_rows())

    for obs in (RoutingTap(4, 2, calls.append), (lambda n: n.startswith("ffn_moe_topk-"), handle)):
        ctx = Context(model, 256, n_batch=16, n_ubatch=8, observer=obs)
        ctx.decode(toks, 0, 0)
        ctx.decode([toks[1], toks[2]], len(toks), 0)
        ctx.close()
    model.close()
    assert len(calls) == -(-len(toks) // 16) + 1  # one hand-over per llama_decode call
    for layer in range(4):
        tap_rows = np.concatenate([c[layer] for c in calls])
        assert np.array_equal(tap_rows, np.concatenate(seen[layer]))
    assert len(np.concatenate([c[0] for c in calls])) == len(toks) + 2


def test_dense_models_have_no_experts(smol_path):
    with pytest.raises(ValueError, match="dense"):
        record(smol_path, "hello")


def test_expert_ranges_and_prefetch_budget(tiny_moe):
    m = ExpertFileMap(tiny_moe)
    assert m.n_expert == 8 and len(m.ranges) == 4 * 8
    size = tiny_moe.stat().st_size
    per = m.nbytes(0, 0)
    assert per == 3 * 32 * 64 * 4  # gate, up, down: 32x64 f32 each
    (o0, n0), (o1, n1) = m.ranges[(2, 0)][0], m.ranges[(2, 1)][0]
    assert o1 == o0 + n0 and o1 + n1 <= size  # experts are contiguous slices inside the file
    pf = Prefetcher(tiny_moe, budget_bytes=3 * per)
    pf.willneed(1, [0, 1])
    pf.willneed(2, [3, 4])
    assert pf.issued == 4 * per and pf.used <= 3 * per  # the oldest fell out of the budget
    pf.willneed(2, [4])  # already resident: nothing issued
    assert pf.issued == 4 * per
    pf.close()


def test_markov_predictor_nears_bayes_and_beats_cofiring():
    src = MarkovSource.random(8, 32, 2, seed=3)
    trace = src.sample(2500, seed=4)
    markov = cs.prediction_hit_rate(trace, 32, MarkovPredictor(8, 32))
    cofire = cs.prediction_hit_rate(trace, 32, CoFiringPredictor(8, 32))
    bayes = cs.prediction_hit_rate(trace, 32, OraclePredictor(src))
    assert markov >= 0.93 * bayes
    assert markov > cofire
    cap = int(0.2 * 8 * 32)
    lru = cs.lru(trace, 32, cap)
    assert cs.lru(trace, 32, cap, MarkovPredictor(8, 32)) > lru
    assert cs.belady(trace, 32, cap) >= max(lru, cs.lfu(trace, 32, cap))
    assert cs.lru(trace, 32, 8 * 32) == cs.belady(trace, 32, 8 * 32)  # everything fits: only cold misses


def test_predictor_persists(tmp_path):
    p = MarkovPredictor(4, 8)
    p.learn(1, np.array([2, 3]), np.array([0, 1]), None)
    p.save(tmp_path / "m.npz")
    q = MarkovPredictor.load(tmp_path / "m.npz", 4, 8)
    assert np.array_equal(q.layer_c, p.layer_c)
    fresh = MarkovPredictor.load(tmp_path / "m.npz", 5, 8)  # another model's shape: start over
    assert fresh.layer_c.shape == (4, 8, 8)


def test_a_moe_session_learns_routing_and_keeps_it(home, tiny_moe):
    from localsym.runtime.engine import GenParams, RunOptions
    from localsym.session import Session

    with Session.open("moe", str(tiny_moe), RunOptions(n_ctx=512, vram="cpu")) as s:
        assert s.experts is not None
        "".join(s.ask("Tell me something.", GenParams(max_tokens=8)))
        assert s.experts.predicted > 0 and 0 <= s.experts.hit_rate <= 1
        store = s.experts.store
        learned = s.experts.pred.layer_c.copy()
    assert store.exists()
    assert np.array_equal(MarkovPredictor.load(store, 4, 8).layer_c, learned)
    with Session.open("moe-2", str(tiny_moe), RunOptions(n_ctx=512, vram="cpu")) as s:
        # the same model in another session starts from what was learned, not from the prior
        assert np.abs(s.experts.pred.layer_c - MarkovPredictor(4, 8).layer_c).max() > 0.1
