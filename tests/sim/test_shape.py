"""The fast paths agree with their definitions: plan sums per request, step time phase by phase."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.helpers import Entry, make_plan
from tokensched_sim import BatchShape, CostModel, Deployment, Efficiency

entries = st.lists(
    st.builds(
        lambda c, extra, drafts, sample: Entry("r", c, len(drafts) + 1 + extra, sample, tuple(drafts)),
        st.integers(0, 200_000),
        st.one_of(st.just(0), st.integers(0, 5000)),
        st.lists(st.integers(1, 100), max_size=4),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def naive(batch: list[Entry]) -> BatchShape:
    pre_pairs = pre_kv = pre_ctx = dec_pairs = dec_kv = logits = pre_q = pre_n = pre_logits = 0
    for e in batch:
        q, c = e.num_tokens, e.computed
        pairs = sum(c + j + 1 for j in range(q))  # query j attends to c + j + 1 keys
        if q <= 1 + len(e.drafts):
            dec_pairs, dec_kv = dec_pairs + pairs, dec_kv + c + q
        else:
            pre_pairs, pre_kv, pre_ctx = pre_pairs + pairs, pre_kv + c + q, pre_ctx + c
            pre_q, pre_n = pre_q + q, pre_n + 1
            pre_logits += (1 + len(e.drafts)) if e.sample else 0
        logits += (1 + len(e.drafts)) if e.sample else 0
    tokens = sum(e.num_tokens for e in batch)
    return BatchShape(
        tokens, logits, pre_pairs, pre_kv, pre_ctx, dec_pairs, dec_kv, len(batch), pre_q, pre_n, pre_logits
    )


@settings(max_examples=150, deadline=None)
@given(entries)
def test_from_plan_matches_the_per_request_sums(batch: list[Entry]) -> None:
    batch = [Entry(f"r{i}", e.computed, e.num_tokens, e.sample, e.drafts) for i, e in enumerate(batch)]
    assert BatchShape.from_plan(make_plan(0, batch)) == naive(batch)


def test_pure_decode_fast_path() -> None:
    batch = [Entry("a", 10, 1), Entry("b", 20, 1, sample=False)]
    assert BatchShape.from_plan(make_plan(0, batch)) == BatchShape(2, 1, 0, 0, 0, 11 + 21, 11 + 21, 2)


MODELS = [
    CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4)),
    CostModel(Deployment(model="deepseek-v3", gpu="h200", tp=8, efficiency=Efficiency(matmul=0.3, memory=0.9))),
    CostModel(Deployment(model="dense-8b", gpu="h100", tp=2)),
    CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", attention="dp", moe="ep")),
    CostModel(Deployment(model="deepseek-v3", gpu="b200", tp=8, moe="ep", attention_dtype="fp8", engine="trtllm")),
    CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=8, attention="dp", engine="sglang")),
    CostModel(Deployment(model="dense-8b", gpu="h100", tp=2, attention="dp", engine="vllm")),
]


@settings(max_examples=100, deadline=None)
@given(entries, st.sampled_from(range(len(MODELS))))
def test_fast_step_time_equals_the_phase_by_phase_roofline(batch: list[Entry], which: int) -> None:
    model = MODELS[which]
    shape = naive([Entry(f"r{i}", e.computed, e.num_tokens, e.sample, e.drafts) for i, e in enumerate(batch)])
    slow = model.time_from_terms(model.terms(shape)) + model.efficiency.step_overhead_s
    assert model.step_time(shape) == pytest.approx(slow, rel=1e-12)
    assert sum(model.breakdown(shape).values()) == pytest.approx(slow, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(range(len(MODELS))), st.integers(1, 300), st.integers(0, 10**7), st.integers(1, 5))
def test_fast_draft_time_equals_the_sum_of_its_passes(which: int, requests: int, kv: int, drafts: int) -> None:
    model = CostModel(MODELS[which].deployment.model_copy(update={"num_speculative_tokens": drafts}))
    head = model.draft
    assert head is not None
    d, e = model.deployment, model.efficiency
    tp, bw = d.tp, d.gpu.hbm_bytes_per_s
    params = head.params() / tp
    kv_bytes = head.kv_values_per_token(tp) * (d.kv_dtype or d.model.kv_dtype).bytes
    pair_flops = 2 * head.num_heads / tp * 2 * head.head_dim
    ring = 2 * (tp - 1) / tp * d.model.hidden_size * 2 / (d.gpu.nvlink_bytes_per_s / 2)
    slow = 0.0
    for j in range(drafts):  # pass j: every request's draft attends over its context plus j earlier drafts
        grown = kv + j * requests
        weights = max(2 * requests * params / (d.gpu.bf16_flops * e.matmul), params * 2 / (bw * e.memory))
        attn = max(grown * pair_flops / (d.gpu.bf16_flops * e.attention), grown * kv_bytes / (bw * e.memory))
        comm = (requests * 2 * ring / e.network + 2 * e.allreduce_latency_s) if tp > 1 else 0.0
        slow += weights + attn + comm + head.num_layers * e.layer_overhead_s
    assert model.draft_time(requests, kv, drafts) == pytest.approx(slow, rel=1e-9)


@settings(max_examples=100, deadline=None)
@given(entries)
def test_split_partitions_a_step_into_its_prefill_and_decode_passes(batch: list[Entry]) -> None:
    batch = [Entry(f"r{i}", e.computed, e.num_tokens, e.sample, e.drafts) for i, e in enumerate(batch)]
    whole = BatchShape.from_plan(make_plan(0, batch))
    prefill, decode = whole.split()
    assert prefill.num_tokens + decode.num_tokens == whole.num_tokens
    assert prefill.num_logits + decode.num_logits == whole.num_logits
    assert prefill.num_requests + decode.num_requests == whole.num_requests
    assert (prefill.decode_pairs, prefill.decode_kv_tokens) == (0, 0)
    assert (decode.prefill_pairs, decode.prefill_kv_tokens, decode.num_prefill_tokens) == (0, 0, 0)
    assert prefill.prefill_pairs == whole.prefill_pairs and decode.decode_pairs == whole.decode_pairs
