"""Fit plans for big shapes, from metadata-only GGUFs written with the gguf package."""

import numpy as np
import pytest
from gguf_shapes import llama_7b, qwen3_30b_a3b

from localsym.errors import BudgetError, LocalsymError
from localsym.runtime.fit_plan import GiB, MiB, parse_size, plan_fit
from localsym.runtime.gguf_file import read_header
from localsym.runtime.model_info import model_info


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    d = tmp_path_factory.mktemp("shapes")
    return {"7b": model_info(llama_7b(d / "7b.gguf")), "30b": model_info(qwen3_30b_a3b(d / "30b.gguf"))}


def test_parse_size():
    assert parse_size("8GiB") == 8 * GiB
    assert parse_size("16G") == 16 * GiB
    assert parse_size("512MiB") == 512 * MiB
    with pytest.raises(LocalsymError):
        parse_size("eight gigs")


def test_metadata_only_files_are_small_and_shaped_right(shapes, tmp_path):
    info = shapes["7b"]
    assert not read_header(info.path).has_weights
    assert info.path.stat().st_size < 1 << 20
    assert 6.5e9 < info.n_params < 7e9
    assert 3.8 * GiB < info.weights_bytes < 4.2 * GiB  # Q4_K_M-sized
    moe = shapes["30b"]
    assert moe.n_expert == 128 and moe.n_expert_used == 8
    assert 30e9 < moe.n_params < 31e9
    assert sum(moe.expert_bytes) > 0.9 * moe.weights_bytes


@pytest.mark.parametrize("vram", [8, 16])
def test_7b_fits_fully_on_a_laptop_gpu(shapes, vram):
    info = shapes["7b"]
    plan = plan_fit(info, vram * GiB, 16 * GiB)
    assert plan.device == "gpu"
    assert plan.n_gpu_layers == info.n_layer + 1  # every layer and the output head
    assert plan.gpu_bytes <= vram * GiB
    assert plan.n_ctx == 4096  # Llama-2's own context, the auto hot window's cap
    assert plan.parts["gpu_kv_cache"] == info.kv_bytes_per_token() * plan.n_ctx


def test_7b_on_a_small_gpu_offloads_part_of_the_layers(shapes):
    info = shapes["7b"]
    plan = plan_fit(info, 4 * GiB, 16 * GiB, n_ctx=4096, type_k="f16", type_v="f16")
    assert plan.device == "gpu"
    assert 0 < plan.n_gpu_layers < info.n_layer
    assert plan.gpu_bytes <= 4 * GiB


def test_30b_a3b_keeps_experts_on_the_cpu(shapes):
    info = shapes["30b"]
    p8 = plan_fit(info, 8 * GiB, 32 * GiB)
    p16 = plan_fit(info, 16 * GiB, 32 * GiB)
    for plan, budget in ((p8, 8), (p16, 16)):
        assert plan.device == "gpu"
        assert plan.n_gpu_layers == info.n_layer + 1  # attention of every layer on the GPU
        assert 0 < plan.n_cpu_moe < info.n_layer
        assert plan.gpu_bytes <= budget * GiB
        assert plan.n_ctx == 8192
        assert (plan.type_k, plan.type_v) == ("f16", "f16")  # the KV is small; keep it exact
    assert p16.n_cpu_moe < p8.n_cpu_moe  # more VRAM keeps more experts on the GPU


@pytest.mark.parametrize("vram", [8, 16])
def test_sessions_sharing_one_context_fit_the_gpu_together(shapes, vram):
    """serve --parallel 4 without -c: the window is chosen per session so that all four fit
    the GPU, never one session's window allocated four times over."""
    info = shapes["7b"]
    one = plan_fit(info, vram * GiB, 16 * GiB)
    four = plan_fit(info, vram * GiB, 16 * GiB, parallel=4)
    assert four.device == "gpu" and four.gpu_bytes <= vram * GiB
    assert four.n_ctx % 4 == 0 and four.n_ctx // 4 <= one.n_ctx
    # the KV of all four windows is in the budget: as much as one context of their total
    total = plan_fit(info, vram * GiB, 16 * GiB, n_ctx=four.n_ctx, type_k=four.type_k, type_v=four.type_v)
    assert four.parts["gpu_kv_cache"] == total.parts["gpu_kv_cache"] > 0
    with pytest.raises(BudgetError, match="4 sessions of 1000000 tokens"):
        plan_fit(info, 0, 8 * GiB, n_ctx=1_000_000, parallel=4)


def test_cpu_plan_and_budget_errors(shapes):
    info = shapes["7b"]
    plan = plan_fit(info, 0, 16 * GiB)
    assert plan.device == "cpu" and plan.n_gpu_layers == 0
    with pytest.raises(BudgetError, match="lower -c"):
        plan_fit(info, 0, 8 * GiB, n_ctx=1_000_000)
    with pytest.raises(LocalsymError, match="flash attention"):
        plan_fit(info, 0, 16 * GiB, type_v="q8_0", flash_attn=False)


def test_learned_routing_chooses_which_layers_keep_experts_in_ram(shapes):
    """Layers whose routing is concentrated have small RAM working sets: they go to RAM,
    not llama.cpp's first N."""
    from localsym.runtime.expert_placement import advise, hot_experts
    from localsym.runtime.fit_plan import place_experts

    info = shapes["30b"]
    rng = np.random.default_rng(0)
    usage = rng.uniform(0.5, 1.0, (info.n_layer, info.n_expert))  # diffuse: most experts needed
    concentrated = [5, 17, 30, 41]
    usage[concentrated] = 1e-3
    usage[np.ix_(concentrated, range(8))] = 1.0  # 8 experts serve nearly all routing
    assert (hot_experts(usage, 0.9)[concentrated] <= 8).all()
    assert (np.delete(hot_experts(usage, 0.9), concentrated) > 90).all()
    placed = advise(usage, info.expert_bytes, 4)
    assert placed.cpu_layers == concentrated
    assert placed.hot_bytes < placed.first_n_hot_bytes / 8

    plan = plan_fit(info, 8 * GiB, 64 * GiB)
    n = plan.n_cpu_moe
    place_experts(plan, info, usage)
    assert plan.n_cpu_moe == n and len(plan.cpu_moe_layers) == n
    assert set(concentrated) <= set(plan.cpu_moe_layers)
    assert any("learned routing" in note for note in plan.notes)
    assert plan.as_dict()["cpu_moe_layers"] == plan.cpu_moe_layers


def test_planned_windows_are_one_where_routing_is_watched():
    """--parallel N plans N windows of one shared context; a MoE model's engines watch its
    routing (one context each), and the embedding context plans as they do."""
    from localsym.runtime.engine import RunOptions, planned_windows

    assert planned_windows(RunOptions(parallel=4), routed=False) == 4
    assert planned_windows(RunOptions(parallel=4), routed=True) == 1
    assert planned_windows(RunOptions(parallel=0), routed=False) == 1
    assert planned_windows(RunOptions(parallel=1), routed=False) == 1
