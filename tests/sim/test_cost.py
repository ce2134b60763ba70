"""The cost model against roofline figures worked out by hand.

Efficiencies are set to 1 and fixed costs to 0 where a test checks the
roofline itself, so each expected number is datasheet arithmetic:
H100 SXM: 989.5e12 dense BF16 FLOP/s, 3.35e12 B/s HBM, NVLink 900e9 B/s (450e9 one way).
Llama-3.1-8B shape: 32 layers, hidden 4096, 32 heads, 8 KV heads of 128, MLP 14336, vocab 128256.
"""

from __future__ import annotations

import math

import pytest

from tokensched_sim import BatchShape, CostModel, Deployment, Efficiency

PEAK = 989.5e12
HBM = 3.35e12
IDEAL = Efficiency(matmul=1, attention=1, memory=1, network=1, step_overhead_s=0, allreduce_latency_s=0)

# Per-layer weights of the 8B shape.
ATTN = 4096 * 4096 * 2 + 4096 * 1024 * 2  # q and o are 4096x4096; k and v are 4096x(8*128)
MLP = 3 * 4096 * 14336  # gate, up, down
HEAD = 128256 * 4096
KV_BYTES = 2 * 8 * 128 * 2  # K and V, 8 heads of 128, BF16: per token per layer


def dense8b(tp: int = 1, efficiency: Efficiency = IDEAL) -> CostModel:
    return CostModel(Deployment(model="dense-8b", gpu="h100", tp=tp, efficiency=efficiency))


def test_prefill_is_compute_bound_and_matches_the_flop_count() -> None:
    t = 4096
    shape = BatchShape.from_counts(num_prefill_tokens=t, num_prefill_requests=1)
    parts = dense8b().breakdown(shape)
    # Projections: 2 FLOPs per weight per token, 343.6 GFLOP a layer -> 347 us (weights alone: 25 us).
    assert parts["attn_proj"] == pytest.approx(32 * 2 * t * ATTN / PEAK)
    # Causal attention: 4096*4097/2 query-key pairs, 2*32 heads*(128 qk + 128 v) FLOPs each.
    assert parts["prefill_attn"] == pytest.approx(32 * (t * (t + 1) / 2) * 2 * 32 * 256 / PEAK)
    assert parts["dense_mlp"] == pytest.approx(32 * 2 * t * MLP / PEAK)
    # One logit row: the lm_head is read once (1.05 GB at 3.35 TB/s = 314 us), its 1 GFLOP is nothing.
    assert parts["lm_head"] == pytest.approx(HEAD * 2 / HBM)
    total = 32 * (2 * t * ATTN + t * (t + 1) / 2 * 16384 + 2 * t * MLP) / PEAK + HEAD * 2 / HBM
    assert dense8b().step_time(shape) == pytest.approx(total)
    assert total == pytest.approx(0.0625, rel=0.01)  # 62.5 ms: ~65k tokens/s at full peak


def test_prefill_attention_grows_with_the_cached_prefix() -> None:
    # 512 new tokens after 32k cached ones: pairs = 512*32768 + 512*513/2.
    shape = BatchShape.from_counts(num_prefill_tokens=512, num_prefill_requests=1, prefill_context_tokens=32768)
    pairs = 512 * 32768 + 512 * 513 / 2
    assert shape.prefill_pairs == pairs
    flops = 32 * pairs * 2 * 32 * 256
    reads = 32 * (32768 + 512) * KV_BYTES
    assert dense8b().breakdown(shape)["prefill_attn"] == pytest.approx(max(flops / PEAK, reads / HBM))
    assert flops / PEAK > reads / HBM  # attention over a long prefix is still compute-bound for 512 queries


def test_decode_is_memory_bound_weights_plus_every_requests_kv() -> None:
    # 8 requests, 1000 cached tokens each, one new token each.
    shape = BatchShape.from_counts(num_decode_requests=8, decode_context_tokens=8000)
    parts = dense8b().breakdown(shape)
    assert parts["attn_proj"] == pytest.approx(32 * ATTN * 2 / HBM)  # 25 us/layer; compute would be 0.7 us
    assert parts["decode_attn"] == pytest.approx(32 * 8 * 1001 * KV_BYTES / HBM)
    assert parts["dense_mlp"] == pytest.approx(32 * MLP * 2 / HBM)
    assert parts["lm_head"] == pytest.approx(HEAD * 2 / HBM)
    weights = 32 * (ATTN + MLP) * 2 + HEAD * 2
    expected = (weights + 32 * 8 * 1001 * KV_BYTES) / HBM
    assert dense8b().step_time(shape) == pytest.approx(expected)
    assert expected == pytest.approx(4.81e-3, rel=0.01)  # the 16 GB of weights dominate: 4.8 ms


def test_efficiencies_scale_the_bound_that_binds() -> None:
    slow = dense8b(efficiency=IDEAL.model_copy(update={"memory": 0.5, "step_overhead_s": 1e-3}))
    decode = BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=100)
    assert slow.step_time(decode) == pytest.approx(2 * dense8b().step_time(decode) + 1e-3)
    prefill = BatchShape.from_counts(num_prefill_tokens=4096, num_prefill_requests=1)
    base = dense8b().breakdown(prefill)
    assert slow.breakdown(prefill)["dense_mlp"] == pytest.approx(base["dense_mlp"])  # compute-bound: unchanged


def test_moe_decode_reads_only_the_experts_the_batch_touches() -> None:
    kimi = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, efficiency=IDEAL))
    # Each token picks 8 of 384 experts: one token touches 8, two touch 384*(1-(376/384)^2) = 15.83.
    assert kimi.experts_touched(1) == pytest.approx(8)
    assert kimi.experts_touched(2) == pytest.approx(384 * (1 - (376 / 384) ** 2))
    assert kimi.experts_touched(4096) == pytest.approx(384)
    expert = 3 * 7168 * 2048  # gate, up, down of one expert
    always = expert / 4 * 2 + 7168 * 384 * 2  # shared expert (TP-sharded, BF16) + router (replicated)
    for t in (1, 32):
        touched = 384 * (1 - (1 - 8 / 384) ** t)
        shape = BatchShape.from_counts(num_decode_requests=t, decode_context_tokens=0)
        moe = 60 * (always + touched * expert / 4 * 4.5 / 8) / 8e12  # INT4 + BF16 scale per 32: 4.5 bits
        assert kimi.breakdown(shape)["moe"] == pytest.approx(moe)
    # 32 tokens touch 188 experts, so the MoE read is ~20x one token's, not 32x.
    one = kimi.breakdown(BatchShape.from_counts(num_decode_requests=1))["moe"]
    many = kimi.breakdown(BatchShape.from_counts(num_decode_requests=32))["moe"]
    assert 15 < many / one < 25


def test_mla_decode_reads_the_whole_latent_on_every_tp_rank() -> None:
    shape = BatchShape.from_counts(num_decode_requests=16, decode_context_tokens=16 * 50_000)
    kv_read = 61 * (16 * 50_000 + 16) * 576 * 2 / 8e12  # 512 latent + 64 rope values, BF16, per layer
    for tp in (4, 8):
        kimi = CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=tp, efficiency=IDEAL))
        assert kimi.kv_bytes_per_token == 61 * 576 * 2
        assert kimi.breakdown(shape)["decode_attn"] == pytest.approx(kv_read)


def test_tensor_parallel_adds_two_ring_allreduces_per_layer() -> None:
    t = 1000
    shape = BatchShape.from_counts(num_prefill_tokens=t, num_prefill_requests=1)
    eff = IDEAL.model_copy(update={"network": 0.5, "allreduce_latency_s": 1e-5})
    # Each all-reduce moves 2*(p-1)/p of t*4096 BF16 values over one direction of NVLink (450 GB/s).
    per_allreduce = 2 * (2 - 1) / 2 * t * 4096 * 2 / 450e9
    expected = 32 * 2 * (per_allreduce / 0.5 + 1e-5)
    assert dense8b(tp=2, efficiency=eff).breakdown(shape)["allreduce"] == pytest.approx(expected)
    assert dense8b(tp=1, efficiency=eff).breakdown(shape)["allreduce"] == 0.0
    # TP=2 halves each rank's weights: a decode's weight traffic halves too.
    decode = BatchShape.from_counts(num_decode_requests=1)
    assert dense8b(tp=2).breakdown(decode)["dense_mlp"] == pytest.approx(dense8b().breakdown(decode)["dense_mlp"] / 2)


def test_speculative_verification_computes_k_plus_one_tokens_per_request() -> None:
    shape = BatchShape.from_counts(num_decode_requests=4, decode_context_tokens=4000, num_speculative_tokens=3)
    assert shape.num_tokens == 16
    assert shape.num_logits == 16
    # Request with c cached tokens verifies 4 queries: 4c + 4*5/2 pairs; reads c + 4 tokens of KV.
    assert shape.decode_pairs == 4 * 4000 + 4 * 10
    assert shape.decode_kv_tokens == 4000 + 16


def test_an_empty_step_costs_nothing_and_draft_time_grows_with_drafts() -> None:
    assert dense8b(efficiency=Efficiency()).step_time(BatchShape(0, 0)) == 0.0
    assert dense8b(efficiency=Efficiency()).draft_time(8, 8000, 3) == 0.0  # no speculation: no draft head
    cm = CostModel(Deployment(model="dense-8b", gpu="h100", tp=1, num_speculative_tokens=3))
    one = cm.draft_time(8, 8000, 1)
    assert one > 0
    assert cm.draft_time(8, 8000, 3) == pytest.approx(3 * one, rel=0.05)
    assert cm.draft_time(0, 0, 3) == 0.0


def test_tp_must_divide_the_heads() -> None:
    with pytest.raises(ValueError, match="does not divide"):
        Deployment(model="dense-8b", gpu="h100", tp=3)


def test_log_miss_matches_the_closed_form() -> None:
    kimi = CostModel(Deployment())
    assert kimi.experts_touched(10) == pytest.approx(384 * (1 - math.pow(376 / 384, 10)))
    assert kimi.experts_touched(0) == 0.0
