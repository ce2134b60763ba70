"""TokenSource.sample_step draws what sample draws (same tokens, drafts, counters and RNG after) and gives
the shape BatchShape.from_plan gives, for plans that mix prefill chunks, decodes and drafts."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.helpers import Entry, make_plan, new_request
from tokensched.errors import InvalidRequest
from tokensched_sim.shape import BatchShape
from tokensched_sim.tokens import SimStats, TokenSource

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
VOCAB = 5  # small, so that the EOS id's skip is exercised


def source(k: int, alpha: float, targets: dict[str, int | None], eos: int, logprobs: bool) -> TokenSource:
    tokens = TokenSource(
        vocab_size=VOCAB,
        eos_token_id=eos,
        output_lengths=targets.get,
        num_speculative_tokens=k,
        acceptance_rate=alpha,
        seed=11,
        stats=SimStats(),
    )
    ids = list(targets)
    new = [new_request(i, 3, logprobs=logprobs and n == 0) for n, i in enumerate(ids)]
    tokens.admit(make_plan(0, [Entry(i, 0, 3) for i in ids], new=new))
    return tokens


# A step: per request (by index) whether it runs, its context, its kind (0 decode, else a chunk of that many
# tokens), whether it samples (a chunk that ends its prompt) and the drafts a decode verifies.
rows = st.tuples(
    st.booleans(),
    st.integers(0, 10**6),
    st.integers(0, 40),
    st.booleans(),
    st.lists(st.integers(1, VOCAB - 1), max_size=4),
)
steps = st.lists(st.lists(rows, max_size=7), min_size=1, max_size=8)


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None)
@given(
    st.integers(0, 4),
    st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    st.lists(st.one_of(st.none(), st.integers(1, 12)), min_size=1, max_size=7),
    st.integers(0, VOCAB - 1),
    st.booleans(),
    steps,
)
def test_sample_step_is_sample_and_from_plan(
    k: int, alpha: float, lengths: list[int | None], eos: int, logprobs: bool, walk: list[Any]
) -> None:
    targets = {f"r{i}": n for i, n in enumerate(lengths)}
    ids = list(targets)
    one, fused = source(k, alpha, targets, eos, logprobs), source(k, alpha, targets, eos, logprobs)
    for step_id, step in enumerate(walk, start=1):
        entries = []
        for i, (runs, computed, chunk, samples, drafts) in enumerate(step[: len(ids)]):
            if not runs:
                continue
            if chunk:  # a prefill chunk verifies no drafts
                entries.append(Entry(ids[i], computed, chunk, samples))
            else:
                entries.append(Entry(ids[i], computed, 1 + len(drafts), True, tuple(drafts)))
        plan = make_plan(step_id, entries)
        expected, expected_shape = one.sample(plan), BatchShape.from_plan(plan)
        sampled, shape = fused.sample_step(plan)
        assert sampled == expected
        assert shape == expected_shape
        for row in sampled.drafts or []:  # proposals skip the EOS id: a draft never ends a request by chance
            assert all(0 <= t < VOCAB and t != eos for t in row)
        for toks in sampled.tokens:  # every sampled token is a vocabulary id
            assert all(0 <= t < VOCAB for t in toks)
        assert fused.stats == one.stats
        assert fused._left == one._left
    assert fused._rng.getstate() == one._rng.getstate()


def test_sample_step_of_a_request_never_sent_is_refused() -> None:
    tokens = source(3, 0.5, {"a": 5}, 0, False)
    with pytest.raises(InvalidRequest, match="step 4: request 'b' was never sent in full"):
        tokens.sample_step(make_plan(4, [Entry("a", 3, 1), Entry("b", 3, 1)]))
