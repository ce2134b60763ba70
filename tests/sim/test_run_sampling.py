"""TokenSource.sample_run_step draws what sample_decodes draws (same tokens, drafts, counters and RNG after)
and sums the step as BatchShape.decodes does."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.sim.helpers import Entry, make_plan, new_request
from tokensched.errors import InvalidRequest
from tokensched_sim.shape import BatchShape
from tokensched_sim.tokens import SimStats, TokenSource

VOCAB = 5  # small, so that the EOS id's skip is exercised


def source(k: int, alpha: float, targets: dict[str, int | None], eos: int) -> TokenSource:
    tokens = TokenSource(
        vocab_size=VOCAB,
        eos_token_id=eos,
        output_lengths=targets.get,
        num_speculative_tokens=k,
        acceptance_rate=alpha,
        seed=7,
        stats=SimStats(),
    )
    ids = list(targets)
    tokens.admit(make_plan(0, [Entry(i, 0, 3) for i in ids], new=[new_request(i, 3) for i in ids]))
    return tokens


# A step: for each request (by index), whether it runs and the drafts it verifies; its context position.
steps = st.lists(
    st.lists(st.tuples(st.booleans(), st.lists(st.integers(1, VOCAB - 1), max_size=4), st.integers(0, 10**6))),
    min_size=1,
    max_size=8,
)


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 4),
    st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    st.lists(st.one_of(st.none(), st.integers(1, 12)), min_size=1, max_size=6),
    st.integers(0, VOCAB - 1),
    steps,
)
def test_a_run_step_draws_what_sample_decodes_draws(
    k: int, alpha: float, lengths: list[int | None], eos: int, walk: list[Any]
) -> None:
    targets = {f"r{i}": n for i, n in enumerate(lengths)}
    ids = list(targets)
    one, bulk = source(k, alpha, targets, eos), source(k, alpha, targets, eos)
    for step in walk:
        rows = [i for i, (runs, _, _) in enumerate(step[: len(ids)]) if runs]
        drafts = [step[i][1] for i in rows]
        pos = [step[i][2] if i < len(step) else 0 for i in range(len(ids))]
        kv_after = [pos[i] + 1 + len(d) for i, d in zip(rows, drafts, strict=True)]
        expected = one.sample_decodes([ids[i] for i in rows], drafts, kv_after)
        tokens, proposals, num_proposing, proposing_kv, t, pairs, kv = bulk.sample_run_step(ids, rows, drafts, pos)
        if rows:  # the step's sums, as the cost model takes them
            shape = BatchShape.decodes([pos[i] for i in rows], [1 + len(d) for d in drafts])
            assert (t, pairs, kv) == (shape.num_tokens, shape.decode_pairs, shape.decode_kv_tokens)
        assert tokens == expected.tokens
        assert proposals == expected.drafts
        assert (num_proposing, proposing_kv) == (expected.num_proposing, expected.proposing_kv_tokens)
        assert bulk.stats == one.stats
        assert bulk._left == one._left
    assert bulk._rng.getstate() == one._rng.getstate()


def test_a_run_step_of_a_request_never_sent_is_refused() -> None:
    tokens = source(3, 0.5, {"a": 5}, 0)
    with pytest.raises(InvalidRequest, match="'b' was never sent in full"):
        tokens.sample_run_step(["a", "b"], [1], [[]], [0, 0])


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 4),
    st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    st.lists(st.one_of(st.none(), st.integers(1, 12)), min_size=1, max_size=6),
    st.integers(0, VOCAB - 1),
    steps,
    st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_one_run_sampler_for_every_step_draws_what_sample_decodes_draws(
    k: int, alpha: float, lengths: list[int | None], eos: int, walk: list[Any], between: list[bool]
) -> None:
    """The sampler a run binds once (``run_sampler``) serves all its steps, and reads the targets and counters
    as they are at each call: single steps sampled between two of its calls (``between``) move them."""
    targets = {f"r{i}": n for i, n in enumerate(lengths)}
    ids = list(targets)
    one, bulk = source(k, alpha, targets, eos), source(k, alpha, targets, eos)
    sample = bulk.run_sampler(ids)
    for step, single in zip(walk, between, strict=False):
        rows = [i for i, (runs, _, _) in enumerate(step[: len(ids)]) if runs]
        drafts = [step[i][1] for i in rows]
        pos = [step[i][2] if i < len(step) else 0 for i in range(len(ids))]
        kv_after = [pos[i] + 1 + len(d) for i, d in zip(rows, drafts, strict=True)]
        expected = one.sample_decodes([ids[i] for i in rows], drafts, kv_after)
        tokens, proposals, num_proposing, proposing_kv, t, pairs, kv = sample(rows, drafts, pos)
        if rows:
            shape = BatchShape.decodes([pos[i] for i in rows], [1 + len(d) for d in drafts])
            assert (t, pairs, kv) == (shape.num_tokens, shape.decode_pairs, shape.decode_kv_tokens)
        else:
            assert (t, pairs, kv) == (0, 0, 0)
        assert tokens == expected.tokens
        assert proposals == expected.drafts
        assert (num_proposing, proposing_kv) == (expected.num_proposing, expected.proposing_kv_tokens)
        assert bulk.stats == one.stats
        assert bulk._left == one._left
        if single:  # a single step of every request between two run steps, on both sources alike
            assert bulk.sample_decodes(ids, [[]] * len(ids), [1] * len(ids)) == one.sample_decodes(
                ids, [[]] * len(ids), [1] * len(ids)
            )
    assert bulk._rng.getstate() == one._rng.getstate()


def test_a_run_sampler_refuses_a_request_never_sent_and_draws_nothing() -> None:
    """Bad input gets a typed error, and (the unknown request the step's first row) nothing is drawn."""
    tokens = source(3, 0.5, {"a": 5}, 0)
    state = tokens._rng.getstate()
    with pytest.raises(InvalidRequest, match="'b' was never sent in full"):
        tokens.run_sampler(["b", "a"])([0, 1], [[], []], [0, 0])
    assert tokens._rng.getstate() == state
    assert tokens.stats == SimStats()
