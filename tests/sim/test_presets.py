"""Presets reproduce their model cards, and KV capacity is the memory the weights leave."""

from __future__ import annotations

import pytest

from tokensched_sim import (
    ENGINES,
    GPUS,
    MODELS,
    CostModel,
    Deployment,
    DeploymentError,
    Dtype,
    SimExecutor,
    gpu_preset,
    model_preset,
)
from tokensched_sim.engines import sglang_memory_settings, sglang_vlm_factor

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


MIB = 1 << 20


def test_gpu_memory_is_what_the_device_reports() -> None:
    assert gpu_preset("b200").memory_bytes == 183_359 * MIB == pytest.approx(192.3e9, rel=1e-3)
    assert gpu_preset("h200").memory_bytes == 143_771 * MIB
    assert gpu_preset("h100").memory_bytes == 81_559 * MIB


def test_dense_capacity_follows_the_engine_rule_over_kv_per_token() -> None:
    per_layer = 4096 * 4096 * 2 + 4096 * 1024 * 2 + 3 * 4096 * 14336
    weights = (32 * per_layer + 2 * 128256 * 4096) * 2  # BF16, embedding and lm_head untied
    kv_per_token = 32 * 2 * 8 * 128 * 2
    total = 81_559 * MIB
    runtime = 512 * MIB + GIB / 8
    # Activations of an 8192-token step: 4 hidden states + q, k, v, o (32 heads of 128) + MLP (2 x 14336) in BF16,
    # plus FP32 logits for max_num_seqs rows.
    per_token = (4 * 4096 + 32 * 4 * 128 + 2 * 14336) * 2
    for engine, seqs in (("vllm", 1024), ("trtllm", 2048)):
        cm = CostModel(Deployment(model="dense-8b", gpu="h100", tp=1, engine=engine))
        assert cm.weight_bytes_per_rank == weights == 16_059_990_016
        activations = 8192 * per_token + seqs * 128256 * 4
        m = cm.memory_breakdown()
        assert m.activations == pytest.approx(activations)
        assert m.runtime == runtime
        if engine == "vllm":  # 0.9 of the total, less everything but the graphs
            kv = 0.9 * total - runtime - weights - activations
        else:  # 0.9 of what is free after weights, activations and runtime
            kv = 0.9 * (total - runtime - weights - activations)
        assert m.kv == pytest.approx(kv)
        assert cm.num_kv_tokens == kv // kv_per_token
        assert SimExecutor(cm.deployment, block_size=16).num_kv_blocks == cm.num_kv_tokens // 16
        assert m.unused == pytest.approx(total - weights - activations - runtime - m.cuda_graphs - m.kv)


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
    assert cm.kv_bytes_per_token == kv_per_token
    assert cm.num_kv_tokens == cm.memory_breakdown().kv // kv_per_token
    fp8 = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8"))
    assert fp8.num_kv_tokens == pytest.approx(2 * cm.num_kv_tokens, abs=2)


def test_engines_divide_memory_differently() -> None:
    """On 4x B200 the rules give Kimi-K2.5 ~0.57M (vLLM) to ~1M (TensorRT-LLM) FP8 KV tokens; SGLang none."""
    tokens = {
        engine: CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", engine=engine)).num_kv_tokens
        for engine in ENGINES
        if engine != "sglang"
    }
    assert tokens["trtllm"] > tokens["vllm"]
    assert 0.9e6 < tokens["trtllm"] < 1.1e6
    assert 0.5e6 < tokens["vllm"] < 0.65e6


@pytest.mark.parametrize("spec_tokens", [0, 3])
def test_sglang_cannot_start_kimi_k25_at_tp4_with_its_default_fraction(spec_tokens: int) -> None:
    """SGLang's VLM adjustment takes Kimi-K2.5's fraction below its weights at TP4, EAGLE or not: refused."""
    tp4 = Deployment(
        model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", engine="sglang", num_speculative_tokens=spec_tokens
    )
    with pytest.raises(DeploymentError, match=r"static_fraction 0\.7[67]\d.*per rank short"):
        CostModel(tp4)
    # The same deployment with the fraction set by hand (--mem-fraction-static 0.9) starts.
    assert CostModel(tp4.model_copy(update={"memory_utilization": 0.9})).num_kv_tokens > 0


def test_sglang_lowers_the_fraction_of_a_multimodal_model_by_its_vit() -> None:
    # Kimi-K2.5's MoonViT, 27 layers x 1152: 1.42x ViT-L/14's 24 x 1024^2, so 0.95 x (1 - 0.1 x 0.42).
    ratio = 27 * 1152**2 / (24 * 1024**2)
    assert sglang_vlm_factor(27, 1152) == pytest.approx(0.95 * (1 - 0.1 * (ratio - 1)))
    assert sglang_vlm_factor(0, 0) == 1.0
    assert sglang_vlm_factor(24, 1024) == pytest.approx(0.95)
    assert sglang_vlm_factor(200, 4096) == pytest.approx(0.95 * 0.8)  # clamped
    b200 = 183_359 * MIB
    assert sglang_memory_settings(b200, 8, speculative=True, vlm_factor=0.9)[0] == pytest.approx(
        sglang_memory_settings(b200, 8, speculative=True)[0] * 0.9
    )
    text_only = CostModel(Deployment(model="deepseek-v3", gpu="b200", tp=8, kv_dtype="fp8", engine="sglang"))
    assert text_only.memory_breakdown().fraction == sglang_memory_settings(b200, 8, speculative=False)[0]


def test_sglang_mem_fraction_static_follows_its_heuristic() -> None:
    # B200 (183,359 MiB > 160 GiB): 16k chunks and 512 graphs; reserved MiB = 512 + 1.5*16384 + 2*512 + tp/8*1024.
    assert sglang_memory_settings(183_359 * MIB, 4, speculative=False) == (0.855, 16384, 512)
    assert sglang_memory_settings(183_359 * MIB, 4, speculative=True)[0] == round((183_359 - 28_672) / 183_359, 3)
    h100_reserved = 512 + 1.5 * 8192 + 2 * 512 + 8 / 8 * 1024  # H100 bucket: 8k chunks, 512 graphs at TP >= 4
    expected = (round(1 - h100_reserved / 81_559, 3), 8192, 512)
    assert sglang_memory_settings(81_559 * MIB, 8, speculative=False) == expected
    m = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=8, kv_dtype="fp8", engine="sglang")).memory_breakdown()
    assert m.fraction == pytest.approx(0.852 * sglang_vlm_factor(27, 1152))
    assert m.kv == pytest.approx(m.fraction * 183_359 * MIB - m.runtime - m.weights)


def test_speculation_costs_draft_weights_and_kv() -> None:
    plain = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", engine="trtllm"))
    eagle = CostModel(
        Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", engine="trtllm", num_speculative_tokens=3)
    )
    head = eagle.draft
    assert head is not None and head.num_kv_heads == 64
    # q/k/v over 2h inputs, o, SwiGLU 18432, fc 3h->h, lm_head over 32k: ~1.2B BF16 parameters, TP-sharded.
    params = 2 * 7168 * 3 * 8192 + 8192 * 7168 + 3 * 7168 * 18432 + 3 * 7168**2 + 32000 * 7168
    assert eagle.memory_breakdown().draft == pytest.approx(params / 4 * 2)
    # Its one-layer MHA cache: 64 KV heads / 4 ranks x 128 x (K, V), FP8, on top of the 35,136-byte latent.
    assert eagle.memory_breakdown().kv_bytes_per_token == 61 * 576 + 16 * 128 * 2
    assert eagle.num_kv_tokens < plain.num_kv_tokens * 0.9


def test_capacity_follows_memory_utilization() -> None:
    lo = CostModel(Deployment(model="dense-8b", gpu="h200", tp=1, engine="vllm", memory_utilization=0.5))
    hi = CostModel(Deployment(model="dense-8b", gpu="h200", tp=1, engine="vllm", memory_utilization=0.9))
    assert hi.kv_budget_bytes - lo.kv_budget_bytes == pytest.approx(0.4 * 143_771 * MIB)


def test_dp_attention_holds_every_ranks_latents_but_a_request_lives_on_one() -> None:
    tp = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8"))
    dp = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", attention="dp"))
    assert dp.weight_bytes_per_rank > tp.weight_bytes_per_rank  # attention weights replicated
    assert dp.num_kv_blocks(64) == 4 * (dp.num_kv_tokens // 64)
    assert dp.max_request_tokens(64) == dp.num_kv_tokens // 64 * 64 < tp.max_request_tokens(64)
    assert dp.memory_breakdown().kv_tokens > 3 * tp.memory_breakdown().kv_tokens
    cap = Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", attention="dp").kv_capacity(64)
    assert (cap.num_blocks, cap.max_request_tokens) == (dp.num_kv_blocks(64), dp.max_request_tokens(64))


@pytest.mark.parametrize(("gpu", "tp", "short"), [("h100", 8, "2.5 GB"), ("b200", 2, "128.3 GB")])
def test_weights_that_do_not_fit_are_refused_saying_by_how_much(gpu: str, tp: int, short: str) -> None:
    with pytest.raises(DeploymentError, match=f"{short} per rank short"):
        CostModel(Deployment(model="kimi-k2.5", gpu=gpu, tp=tp, kv_dtype="fp8", engine="vllm"))
    assert issubclass(DeploymentError, ValueError)
    assert CostModel(Deployment(model="deepseek-v3", gpu="h200", tp=8)).num_kv_tokens > 100_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"engine": "tgi"}, "no engine profile 'tgi'; known: vllm, sglang, trtllm, tokensched"),
        ({"kv_dtype": "int4"}, "KV cache dtype int4 is not supported"),
        ({"tp": 3}, "does not divide"),
        ({"moe": "ep", "tp": 8, "model": "dense-8b"}, "needs experts"),
        ({"attention": "cp"}, "attention"),
        ({"draft": "nope", "num_speculative_tokens": 3}, "no draft preset 'nope'"),
        ({"num_speculative_tokens": -1}, "num_speculative_tokens"),
    ],
)
def test_bad_deployments_are_refused_with_a_clear_message(args: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Deployment.model_validate({"model": "kimi-k2.5", "gpu": "b200", **args})


def test_sglang_sizes_the_target_pool_first_and_takes_the_draft_cache_from_its_reserve() -> None:
    eagle = Deployment(model="kimi-k2.5", gpu="b200", tp=8, kv_dtype="fp8", engine="sglang", num_speculative_tokens=3)
    m = CostModel(eagle).memory_breakdown()
    pool = m.fraction * 183_359 * MIB - m.runtime - m.weights  # the target's layers only
    assert m.kv_tokens_per_rank == pool // (61 * 576)
    draft_cell = 8 * 128 * 2  # 64 KV heads / 8 ranks, K and V, FP8
    assert m.kv == pytest.approx(pool - pool % (61 * 576) + m.kv_tokens_per_rank * draft_cell, rel=1e-6)
    # With almost no reserve, the draft's weights and cache no longer fit: refused, saying by how much.
    with pytest.raises(DeploymentError, match="per rank short"):
        CostModel(eagle.model_copy(update={"memory_utilization": 0.99}))
