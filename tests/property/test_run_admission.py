"""A run's admission bound across a rollback: a decode run must stop where single steps would try a waiting request.

With two steps in flight, the step in flight when a run starts may have
taken a block for a row's drafts. If they are rejected the block goes back
to the free list, and if the row then proposes fewer drafts it does not take
it again: the free blocks rise above their number when the run was planned,
above what the waiting head last did not fit with, and the next single step
tries it (here it fits). The run must not plan that step itself.
"""

from __future__ import annotations

import pytest

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.decode_run import RunCursor, RunResult
from tokensched.errors import InvalidRequest
from tokensched.plan import StepPlan


def _scheduler() -> Scheduler:
    config = SchedulerConfig(
        num_blocks=16,
        block_size=4,
        max_batched_tokens=16,
        max_steps_in_flight=2,
        max_model_len=128,
        num_speculative_tokens=2,
        enable_prefix_caching=False,
        admission_reserve=0.0,
    )
    return Scheduler(config, clock=lambda: 0.0)


def _spec(request_id: str, length: int, max_tokens: int) -> RequestSpec:
    return RequestSpec(
        request_id=request_id, prompt_token_ids=[1 + i % 5 for i in range(length)], max_tokens=max_tokens
    )


def _until_the_run(s: Scheduler) -> StepPlan:
    """a and b decode in alternate steps; a's step in flight took a block for drafts; c (14 blocks) waits."""
    s.submit(_spec("a", 2, 30))
    p0 = s.plan()
    s.submit(_spec("b", 2, 30))
    p1 = s.plan()
    assert p0 is not None and p1 is not None
    s.complete(StepResult(p0.step_id, [[7]], [[8, 9]]))
    s.submit(_spec("c", 56, 1))
    p2 = s.plan()  # a at positions 2..4: a new block for its drafts
    assert p2 is not None and p2.request_ids == ["a"] and p2.new_block_ids == [(2,)]
    assert [r.request_id for r in s.waiting] == ["c"] and s.pool.num_free == 13  # c needs 14
    s.complete(StepResult(p1.step_id, [[7]], [[]]))  # b: no drafts, so its next step takes no block
    return p2


def test_a_run_stops_where_a_rollback_lets_single_steps_admit() -> None:
    single, multi = _scheduler(), _scheduler()
    p2 = _until_the_run(single)
    _until_the_run(multi)

    p3 = single.plan()
    assert p3 is not None and p3.request_ids == ["b"]
    single.complete(StepResult(p2.step_id, [[6]], [[]]))  # a's drafts rejected (its block back), none proposed
    assert single.pool.num_free == 14
    p4 = single.plan()
    assert p4 is not None and [n.request_id for n in p4.new_requests] == ["c"]  # c fits now

    run = multi.plan_run(8, cross_blocks=True)
    assert run is not None and run.launched == 1 and run.groups == [[0], [1]] and run.cross_blocks
    cursor = RunCursor(run)
    assert cursor.plan(0) == [[8, 9]] and cursor.plan(1) == [[]]
    cursor.take(0, [[6]], [[]])
    assert cursor.plan(2) is None  # single steps would try c there
    past = RunResult(run.first_step_id, [[[6]], [[6]]], [[[]], [[]]], [None, None])
    with pytest.raises(InvalidRequest, match="past the end of the run"):
        multi.complete_run(past)  # a result that goes on past that step is refused whole
    assert multi.pool.num_free == 13 and [r.request_id for r in multi.waiting] == ["c"]
    multi.complete_run(RunResult(run.first_step_id, [[[6]]], [[[]]], [None]))
    assert multi.pool.num_free == 14
    again = multi.plan()
    assert again is not None and again.step_id == p4.step_id
    assert again.request_ids == p4.request_ids and again.new_block_ids == p4.new_block_ids
    assert [n.request_id for n in again.new_requests] == ["c"]
    assert [r.request_id for r in multi.waiting] == [] == [r.request_id for r in single.waiting]
    assert multi.pool.num_free == single.pool.num_free
