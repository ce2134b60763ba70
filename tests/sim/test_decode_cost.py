"""DecodeCost prices a decode-only step from its sums to the same float as CostModel over a BatchShape."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.plan import StepPlan
from tokensched_sim import BatchShape, CostModel, Deployment, Efficiency
from tokensched_sim.decode_cost import DecodeCost

MODELS = [
    CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", num_speculative_tokens=3)),
    CostModel(Deployment(model="deepseek-v3", gpu="h200", tp=8, efficiency=Efficiency(matmul=0.3, memory=0.9))),
    CostModel(Deployment(model="dense-8b", gpu="h100", tp=1, num_speculative_tokens=2)),
    CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=4, kv_dtype="fp8", attention="dp", moe="ep")),
    CostModel(Deployment(model="deepseek-v3", gpu="b200", tp=8, moe="ep", attention_dtype="fp8", engine="trtllm")),
    CostModel(Deployment(model="kimi-k2.5", gpu="b200", tp=8, attention="dp", engine="sglang")),
]
MODELS.append(MODELS[3].one_dp_rank())  # what the DP-attention bench gives each rank's executor

# A decode row: its context and the drafts it verifies (query tokens = 1 + drafts).
rows = st.lists(st.tuples(st.integers(0, 300_000), st.integers(0, 4)), min_size=1, max_size=70)


def sums(batch: list[tuple[int, int]]) -> tuple[int, int, int, int]:
    """(rows, tokens, pairs, kv tokens), summed as the executor sums a run's step."""
    t = sum_c = qc = qq = 0
    for c, d in batch:
        q = 1 + d
        t, sum_c, qc, qq = t + q, sum_c + c, qc + q * c, qq + q * q
    return len(batch), t, qc + (qq + t) // 2, sum_c + t


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(range(len(MODELS))), st.lists(rows, min_size=1, max_size=4))
def test_step_time_is_the_same_float_as_step_time_of_the_decodes_shape(which: int, steps: list[Any]) -> None:
    model = MODELS[which]
    cost = DecodeCost(model)
    for batch in steps + steps:  # each shape twice: computed, then from the cache
        expected = model.step_time(BatchShape.decodes([c for c, _ in batch], [1 + d for _, d in batch]))
        assert cost.step_time(*sums(batch)) == expected


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([m for m in MODELS if m.draft is not None]),
    st.lists(st.tuples(st.integers(0, 300), st.integers(0, 10**7)), min_size=1, max_size=6),
    st.integers(1, 5),
)
def test_draft_time_is_the_same_float_as_the_models(model: CostModel, calls: list[Any], drafts: int) -> None:
    cost = DecodeCost(model)
    for requests, kv in calls + calls:
        assert cost.draft_time(requests, kv, drafts) == model.draft_time(requests, kv, drafts)


def _two_calls(cost: DecodeCost, batch: list[tuple[int, int]], proposing: int, proposing_kv: int, k: int) -> float:
    """What the executor paid before ``run_step_time``: ``step_time``, then ``draft_time`` if any row proposes."""
    duration = cost.step_time(*sums(batch))
    if proposing:
        duration += cost.draft_time(proposing, proposing_kv, k)
    return duration


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(range(len(MODELS))),
    st.lists(st.tuples(rows, st.integers(0, 70), st.integers(0, 10**7)), min_size=1, max_size=4),
    st.integers(0, 4),
)
def test_run_step_time_is_the_same_float_as_step_time_then_draft_time(which: int, steps: list[Any], k: int) -> None:
    """A run step's price in one call: to the bit what the two calls add up to (cached or not, with or without
    proposing rows, with or without a draft head, and on a model that is not a CostModel)."""
    model = MODELS[which]
    models: list[Any] = [model, _Doubled(model)]
    for priced in models:
        one, two = DecodeCost(priced), DecodeCost(priced)
        for batch, proposing, kv in steps + steps:  # each shape twice: computed, then from the cache
            proposing = min(proposing, len(batch))
            expected = _two_calls(two, batch, proposing, kv, k)
            assert one.run_step_time(*sums(batch), proposing, kv, k) == expected
    assert DecodeCost(model).run_step_time(0, 0, 0, 0, 0, 0, k) == 0.0  # an empty step costs nothing


class _Doubled:
    """A stand-in for a wrapped model (the disaggregated bench's decode-only one): it prices its own way."""

    def __init__(self, inner: CostModel) -> None:
        self.inner = inner
        self.draft = inner.draft

    def step_time(self, shape: BatchShape) -> float:
        return 2 * self.inner.step_time(shape)

    def draft_time(self, num_requests: int, kv_tokens: int, num_drafts: int) -> float:
        return 2 * self.inner.draft_time(num_requests, kv_tokens, num_drafts)


@settings(max_examples=40, deadline=None)
@given(rows)
def test_a_model_that_is_not_a_cost_model_prices_the_decodes_shape_itself(batch: list[tuple[int, int]]) -> None:
    inner = MODELS[0]
    wrapped: Any = _Doubled(inner)
    cost = DecodeCost(wrapped)
    shape = BatchShape.decodes([c for c, _ in batch], [1 + d for _, d in batch])
    assert cost.step_time(*sums(batch)) == 2 * inner.step_time(shape)
    assert cost.draft_time(len(batch), shape.decode_kv_tokens, 3) == 2 * inner.draft_time(
        len(batch), shape.decode_kv_tokens, 3
    )


# A mixed step: prefill chunks (tokens, context, whether the chunk samples) and decodes (context, drafts).
chunks = st.lists(st.tuples(st.integers(1, 9000), st.integers(0, 300_000), st.booleans()), max_size=300)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(range(len(MODELS))), chunks, st.lists(st.tuples(st.integers(0, 300_000), st.integers(0, 4))))
def test_split_step_time_is_the_same_float_as_step_time_of_each_half(
    which: int, prefill: list[tuple[int, int, bool]], decodes: list[tuple[int, int]]
) -> None:
    """What a non-mixing engine pays for a mixed step, priced without building the halves, to the bit."""
    model = MODELS[which]
    qs = [q for q, _, _ in prefill] + [1 + d for _, d in decodes]
    computed = [c for _, c, _ in prefill] + [c for c, _ in decodes]
    offsets = [0]
    for q in qs:
        offsets.append(offsets[-1] + q)
    plan = StepPlan(
        step_id=0,
        block_size=16,
        new_requests=(),
        removed_request_ids=(),
        request_ids=[f"r{i}" for i in range(len(qs))],
        num_computed_tokens=computed,
        token_offsets=offsets,
        token_ids=[1] * offsets[-1],
        slot_mapping=list(range(offsets[-1])),
        new_block_ids=[() for _ in qs],
        sample=[s for _, _, s in prefill] + [True] * len(decodes),
        draft_token_ids=[()] * len(prefill) + [(1,) * d for _, d in decodes],
    )
    shape = BatchShape.from_plan(plan)
    first, second = shape.split()
    assert model.split_step_time(shape) == model.step_time(first) + model.step_time(second)
