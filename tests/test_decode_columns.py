"""The columnar decode path in plain scenarios (tests/property/test_fast_path.py checks it on random traffic)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.machines.request import Decoding
from tokensched.plan import FinishReason, OutputBatch


def steady(fast: bool) -> Scheduler:
    s = Scheduler(
        SchedulerConfig(num_blocks=64, block_size=4, max_batched_tokens=32, max_steps_in_flight=1),
        clock=lambda: 0.0,
        fast_decode=fast,
    )
    for i in range(3):
        s.submit(RequestSpec(request_id=f"r{i}", prompt_token_ids=[1, 2, 3 + i], max_tokens=9, eos_token_id=0))
    return s


def run(s: Scheduler, tokens: list[int]) -> list[list[tuple[str, list[int], FinishReason | None, int]]]:
    seen = []
    for token in tokens:
        plan = s.plan()
        assert plan is not None
        out = s.complete(StepResult(plan.step_id, [[token] if x else [] for x in plan.sample]))
        assert isinstance(out, OutputBatch)
        seen.append([(o.request_id, o.new_token_ids, o.finish_reason, o.num_output_tokens) for o in out])
    return seen


def test_steady_decodes_run_on_columns_and_match_the_per_request_path() -> None:
    fast, slow = steady(True), steady(False)
    assert run(fast, [5, 6, 7, 8, 9]) == run(slow, [5, 6, 7, 8, 9])
    assert fast._cols is not None and slow._cols is None  # the fast scheduler is on the columns now
    # reading a request writes the columns back first: the counters are exact
    for rid in ("r0", "r1", "r2"):
        a, b = fast.get(rid), slow.get(rid)
        assert type(a.state) is Decoding and type(b.state) is Decoding
        assert (a.state.num_computed, a.tokens.tolist(), a.last_token) == (
            b.state.num_computed,
            b.tokens.tolist(),
            b.last_token,
        )
    assert fast._cols is None
    # an eos ends every request in the columns at once, through the per-request code
    assert run(fast, [7, 0]) == run(slow, [7, 0])
    assert not fast.has_work and not slow.has_work


def test_a_fast_plan_hands_its_columns_as_numpy_arrays() -> None:
    s = steady(True)
    run(s, [5, 6])
    plan = s.plan()
    assert plan is not None and s._cols is not None
    a = plan.arrays()
    assert a.token_ids.dtype == np.int32 and a.slot_mapping.dtype == np.int64
    assert a.token_ids.tolist() == plan.token_ids == [6, 6, 6]
    assert a.positions.tolist() == plan.num_computed_tokens == [4, 4, 4]
    assert a.slot_mapping.tolist() == plan.slot_mapping
    assert plan.arrays() is a  # built once


def test_output_batch_compares_like_a_list() -> None:
    s = steady(True)
    run(s, [5, 6])
    plan = s.plan()
    assert plan is not None
    out = s.complete(StepResult(plan.step_id, [[4], [4], [4]]))
    assert len(out) == 3 and out[0].request_id == "r0" and out[1:] == list(out)[1:]
    assert out == list(out) and [o.new_token_ids for o in out] == [[4], [4], [4]]


@settings(max_examples=60, deadline=None)
@given(
    prompts=st.lists(st.integers(1, 11), min_size=1, max_size=6),
    limits=st.lists(st.integers(1, 30), min_size=6, max_size=6),
    eos=st.lists(st.sampled_from([None, 0, 1]), min_size=6, max_size=6),
    tokens=st.lists(st.lists(st.integers(0, 24), min_size=6, max_size=6), min_size=12, max_size=40),
)
def test_phase_groups_and_finishing_rows_agree_with_the_array_definitions(
    prompts: list[int], limits: list[int], eos: list[int | None], tokens: list[list[int]]
) -> None:
    """The lookups that replaced per-step array passes give what those passes gave, at every step."""
    bs = 4
    s = Scheduler(
        SchedulerConfig(num_blocks=128, block_size=bs, max_batched_tokens=64, max_steps_in_flight=1),
        clock=lambda: 0.0,
    )
    for i, length in enumerate(prompts):
        s.submit(
            RequestSpec(
                request_id=f"r{i}",
                prompt_token_ids=list(range(2, 2 + length)),
                max_tokens=limits[i],
                eos_token_id=eos[i],
                stop_token_ids=[5, 6] if i % 3 == 2 else [],
            )
        )
    for row in tokens:
        plan = s.plan()
        if plan is None:
            break
        cols = s._cols
        if cols is not None:
            pos = cols.pos
            for phase in range(bs):
                assert cols.rows_at(phase) == np.flatnonzero(pos % bs == phase).tolist()
            sampled = [row[i % len(row)] for i in range(len(cols))]
            expected = (np.asarray(sampled) == cols.eos) | (pos + 2 >= cols.limit)
            for i in cols.stop_rows:
                expected[i] |= sampled[i] in cols.requests[i].stop_token_ids
            got = cols.finishing_rows(sampled, np.asarray(sampled, dtype=np.int64))
            assert got == np.flatnonzero(expected).tolist()
        s.complete(StepResult(plan.step_id, [[row[i % len(row)]] if x else [] for i, x in enumerate(plan.sample)]))
