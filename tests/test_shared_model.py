"""One copy of the weights for every session in a process (#27): engines on the same model
share one loaded llama_model, each with its own context; the last one out frees it. The
second session's fit plan counts only its own KV cache."""

import threading

import pytest
from gguf_shapes import llama_7b

from localsym.errors import BudgetError
from localsym.runtime.bridge import shared_models
from localsym.runtime.engine import Engine, GenParams, RunOptions, make_plan
from localsym.runtime.fit_plan import GiB, plan_fit
from localsym.runtime.model_info import model_info
from localsym.session import Session, SessionConfig, models

QUESTION = "What is the capital of France?"


def _users(path) -> int:
    real = str(path.resolve())
    return sum(n for k, n in shared_models() if k.path == real)


def _answer(engine: Engine, text: str, n: int = 12) -> str:
    toks = engine.chat_tokens([{"role": "user", "content": text}])
    engine.ctx.clear()
    return "".join(engine.generate(toks, params=GenParams(max_tokens=n)))


def test_engines_share_one_model_and_the_last_frees_it(home):
    path = models.resolve("smollm2-135m")  # the home's own hard link: no other test shares it
    opts = RunOptions(n_ctx=512, vram="cpu")
    a = Engine(path, opts)
    alone = _answer(a, QUESTION)
    b = Engine(path, opts)
    try:
        assert a.model is b.model and a.model.address == b.model.address
        assert a.ctx is not b.ctx
        assert a.model.users == 2 and _users(path) == 2
        assert "shared_weights" in b.plan.parts and "cpu_weights" not in b.plan.parts
        assert _answer(b, QUESTION) == alone

        # both decode at once on their own contexts, from two threads, as serve's workers do
        got: dict[str, str] = {}
        ts = [
            threading.Thread(target=lambda e=e, k=k: got.__setitem__(k, _answer(e, QUESTION)))
            for k, e in zip("ab", (a, b), strict=True)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert got == {"a": alone, "b": alone}

        a.close()
        a.close()  # twice is once
        assert b.model.users == 1 and _users(path) == 1
        assert _answer(b, QUESTION) == alone  # closing one leaves the other working
    finally:
        a.close()
        b.close()
    assert b.model.users == 0 and _users(path) == 0
    with Engine(path, opts) as c:  # loaded again after the last one freed it
        assert c.model is not a.model and c.model.users == 1
        assert _answer(c, QUESTION) == alone


def test_sharing_is_keyed_on_the_placement_not_the_spelling(home):
    path = models.resolve("smollm2-135m")
    with Engine(path, RunOptions(n_ctx=512, vram="cpu")) as a, Engine(path, RunOptions(n_ctx=512, n_gpu_layers=0)) as b:
        assert "shared_weights" not in b.plan.parts  # asked differently: planned on its own
        assert a.model is b.model and a.model.users == 2  # but the same placement: one copy
    assert _users(path) == 0


def test_sessions_share_the_model_and_answer_alike(home):
    cfg = SessionConfig(block_tokens=64)
    opts = RunOptions(n_ctx=1024, vram="cpu")
    s1 = Session.open("one", "smollm2-135m", opts, cfg)
    try:
        first = s1.ask(QUESTION, GenParams(max_tokens=12))
        alone = "".join(first)
        with Session.open("two", "smollm2-135m", opts, cfg) as s2:
            assert s2.engine.model is s1.engine.model
            assert s1.engine.model.users == 2
            assert "".join(s2.ask(QUESTION, GenParams(max_tokens=12))) == alone
            s1.close()
            assert s2.engine.model.users == 1
            again = "".join(s2.ask("And of Italy?", GenParams(max_tokens=8)))
            assert again.strip()
        assert s1.engine.model.users == 0
        assert "Paris" in alone
    finally:
        s1.close()


def test_a_second_session_plans_only_its_kv_cache(tmp_path):
    """A 7B Q4 on an 8 GiB GPU: the first session's weights fill half of it; a second
    session beside it gets only a context (its KV cache, quantized to fit), where a second
    copy of the weights would not fit at all."""
    info = model_info(llama_7b(tmp_path / "7b.gguf"))
    budget, ram = 8 * GiB, 32 * GiB
    first = plan_fit(info, budget, ram, n_ctx=4096)
    assert first.device == "gpu" and first.parts["gpu_weights"] > 3.5 * GiB
    assert first.gpu_bytes + plan_fit(info, budget, ram, n_ctx=4096).gpu_bytes > budget  # two copies: no
    opts = RunOptions(n_ctx=4096, vram="8GiB")
    second = make_plan(info, opts, beside=first, gpu_in_use=first.gpu_bytes)
    assert second.n_gpu_layers == first.n_gpu_layers and second.device == "gpu"
    assert "gpu_weights" not in second.parts and second.parts["shared_weights"] >= first.parts["gpu_weights"]
    assert first.gpu_bytes + second.gpu_bytes <= budget
    assert (second.type_k, second.type_v) != ("f16", "f16")  # what it took to fit
    with pytest.raises(BudgetError, match="another session"):
        make_plan(info, opts, beside=first, gpu_in_use=first.gpu_bytes + second.gpu_bytes)
