"""Presets reproduce their model cards, and KV capacity is the memory the weights leave."""

from __future__ import annotations

import pytest

from tokensched_sim import GPUS, MODELS, CostModel, Deployment, Dtype, SimExecutor, gpu_preset, model_preset

GIB = 1 << 30


@pytest.mark.parametrize(
    ("name", "total", "active"),
    [("kimi-k2.5", 1.0e12, 32e9), ("deepseek-v3", 671e9, 37e9), ("dense-8b", 8.0e9, 7.5e9)],
)
def test_parameter_counts_match_the_model_cards(name: str, total: float, active: float) -> None:
    model = model_preset(name)
    assert model.total_params() == pytest.approx(total, rel=0.03)
    assert model.active_params() == pytest.approx(active, rel=0.03)


def test_datasheet_figures() -> None:
    b200 = gpu_preset("B200")
    assert b200.hbm_bytes_per_s == 8e12
    assert b200.peak_flops(Dtype.FP4) == 2 * b200.peak_flops(Dtype.FP8) == 4 * b200.peak_flops(Dtype.BF16)
    assert b200.peak_flops(Dtype.INT4) == b200.bf16_flops  # W4A16: INT4 weights multiply in BF16
    with pytest.raises(ValueError, match="no fp4 tensor cores"):
        GPUS["h100"].peak_flops(Dtype.FP4)
    assert all(g.source for g in GPUS.values()) and all(m.source for m in MODELS.values())
    with pytest.raises(ValueError, match="no GPU preset"):
        gpu_preset("tpu")


def test_dense_capacity_is_memory_after_weights_over_kv_per_token() -> None:
    cm = CostModel(Deployment(model="dense-8b", gpu="h100", tp=1))
    per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336
    weights = (32 * per_layer + 2 * 128256 * 4096) * 2  # BF16, embedding and lm_head untied
    assert cm.weight_bytes_per_rank == weights == 16_059_990_016
    kv_per_token = 32 * 2 * 8 * 128 * 2
    tokens = (80e9 * 0.9 - weights - 2 * GIB) // kv_per_token
    assert cm.num_kv_tokens == tokens == 410_404
    assert SimExecutor(Deployment(model="dense-8b", gpu="h100", tp=1), block_size=16).num_kv_blocks == tokens // 16


def test_mla_capacity_under_tp_counts_the_whole_latent_on_each_rank() -> None:
    cm = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4))
    replicated = 7168 * 1536 + 7168 * 576  # q_a, kv_a
    sharded = 1536 * 64 * 192 + 512 * 64 * 256 + 64 * 128 * 7168  # q_b, kv_b, o
    attn = (sharded / 4 + replicated) * 2 * 61
    dense_mlp = 3 * 7168 * 18432 / 4 * 2
    expert = 3 * 7168 * 2048
    moe = 60 * (384 * expert / 4 * 4.5 / 8 + (expert / 4 + 7168 * 384) * 2)
    embed = 2 * 163840 * 7168 / 4 * 2
    weights = attn + dense_mlp + moe + embed
    assert cm.weight_bytes_per_rank == pytest.approx(weights)
    assert 145e9 < weights < 155e9  # ~600 GB of weights over 4 GPUs
    kv_per_token = 61 * (512 + 64) * 2  # the whole latent, BF16, not divided by TP
    assert cm.num_kv_tokens == (180e9 * 0.9 - weights - 2 * GIB) // kv_per_token
    fp8 = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8"))
    assert fp8.num_kv_tokens == pytest.approx(2 * cm.num_kv_tokens, abs=2)


def test_capacity_follows_memory_utilization() -> None:
    lo = CostModel(Deployment(model="dense-8b", gpu="h200", tp=1, memory_utilization=0.5))
    hi = CostModel(Deployment(model="dense-8b", gpu="h200", tp=1, memory_utilization=0.9))
    assert hi.kv_budget_bytes - lo.kv_budget_bytes == pytest.approx(0.4 * 141e9)


def test_weights_that_do_not_fit_are_refused() -> None:
    with pytest.raises(ValueError, match="no room for a KV cache"):
        CostModel(Deployment(model="deepseek-v3", gpu="h100", tp=8))
    assert CostModel(Deployment(model="deepseek-v3", gpu="h200", tp=8)).num_kv_tokens > 100_000
