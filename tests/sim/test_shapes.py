"""Deployment shapes: what DP attention and expert parallelism change, and what the model says about them."""

from __future__ import annotations

import math

import pytest

from tokensched_sim import BatchShape, CostModel, Deployment
from tokensched_sim.cost import expert_imbalance
from tokensched_sim.draft import KIMI_EAGLE3_ACCEPT_LENGTH, acceptance_rate_for_length
from tokensched_sim.operating import best_at_speed, decode_point, max_batch

ALPHA = acceptance_rate_for_length(KIMI_EAGLE3_ACCEPT_LENGTH, 3)


def kimi(attention: str = "tp", moe: str = "tp", tp: int = 4, drafts: int = 3) -> CostModel:
    return CostModel(
        Deployment(
            model="kimi-k2.5",
            gpu="b200",
            tp=tp,
            kv_dtype="fp8",
            attention=attention,
            moe=moe,
            num_speculative_tokens=drafts,
        )
    )


def test_expert_imbalance_is_the_expected_maximum_of_binomial_loads() -> None:
    # 8 tokens x 8 experts over 4 ranks: mean 16 a rank, sd sqrt(64 * 1/4 * 3/4) = 3.46, max ~ mean + sd sqrt(2 ln 4).
    assert expert_imbalance(8, 8, 4) == pytest.approx(1 + math.sqrt(2 * math.log(4) * 3 / 64))
    assert expert_imbalance(1, 8, 4) <= 4
    assert expert_imbalance(10_000, 8, 4) < 1.02
    assert expert_imbalance(8, 8, 1) == 1.0
    assert expert_imbalance(16, 8, 4) < expert_imbalance(8, 8, 4)


def test_dp_share_is_the_busiest_ranks() -> None:
    dp, tp = kimi("dp"), kimi("tp")
    assert [dp.dp_share(n) for n in (1, 4, 5, 8)] == [1.0, 0.25, 2 / 5, 0.25]
    assert dp.dp_share(0) == 0.25 and tp.dp_share(5) == 1.0


def test_dp_attention_reads_only_its_own_requests_latents_but_all_attention_weights() -> None:
    tp, dp = kimi("tp", drafts=0), kimi("dp", drafts=0)
    big = BatchShape.from_counts(num_decode_requests=64, decode_context_tokens=64 * 100_000)
    # A quarter of the latents, but all 64 heads instead of 16: the same FLOPs, so MLA decode turns compute-bound.
    assert dp.terms(big).memory_s[2] == pytest.approx(tp.terms(big).memory_s[2] / 4)
    assert dp.terms(big).compute_s[2] == pytest.approx(tp.terms(big).compute_s[2])
    one = BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=1000)
    sharded = 1536 * 64 * 192 + 512 * 64 * 256 + 64 * 128 * 7168  # q_b, kv_b, o: replicated under DP
    replicated = 7168 * (1536 + 576)  # q_a, kv_a: replicated under both
    ratio = (sharded + replicated) / (sharded / 4 + replicated)
    assert dp.breakdown(one)["attn_proj"] == pytest.approx(ratio * tp.breakdown(one)["attn_proj"])
    # No all-reduce after attention: all-gather + reduce-scatter around the MLP move one all-reduce's volume.
    assert dp.terms(big).network_s == pytest.approx(tp.terms(big).network_s / 2)


def test_only_dp_attention_with_ep_uses_all_to_all() -> None:
    shape = BatchShape.from_counts(num_decode_requests=64, decode_context_tokens=64 * 1000)
    tp_ep, dp_tp, dp_ep = kimi("tp", "ep", drafts=0), kimi("dp", "tp", drafts=0), kimi("dp", "ep", drafts=0)
    assert tp_ep.terms(shape).network_s == pytest.approx(kimi(drafts=0).terms(shape).network_s)
    # a2a per MoE layer: 16 tokens x 8 experts x 3/4 remote x 7168 x (1 + 2) B, vs AG + RS of 64 x 7168 BF16.
    a2a = 16 * 8 * 0.75 * 7168 * 3
    gather_scatter = 2 * 0.75 * 64 * 7168 * 2
    moe_layers = 60
    extra = moe_layers * (a2a - gather_scatter) / 900e9
    assert dp_ep.terms(shape).network_s - dp_tp.terms(shape).network_s == pytest.approx(extra)


def test_the_fastest_single_user_is_attention_tp_with_moe_tp() -> None:
    """At batch 1 (the top of the per-user speed axis) TP/TP wins: no replicated weights, no expert imbalance."""
    speeds = {
        (a, m): decode_point(kimi(a, m), 1, 100_000, ALPHA).tps_per_user for a in ("tp", "dp") for m in ("tp", "ep")
    }
    assert max(speeds, key=lambda s: speeds[s]) == ("tp", "tp")


def test_dp_attention_serves_more_per_gpu_at_low_per_user_speed() -> None:
    """Where batches are large, DP attention's extra KV and un-replicated latent reads win (printed by sim_shapes)."""
    tp, dp = kimi("tp"), kimi("dp")
    assert max_batch(dp, 100_000) >= 3 * max_batch(tp, 100_000)
    slow_tp, slow_dp = best_at_speed(tp, 100_000, 20, ALPHA), best_at_speed(dp, 100_000, 20, ALPHA)
    assert slow_tp is not None and slow_dp is not None
    assert slow_dp.tokens_per_s_per_gpu > slow_tp.tokens_per_s_per_gpu
