"""The starved rule of ``Scheduler._schedule_running`` and ``plan_rows.schedule_running``, through the public API.

Once a better-ranked request cannot get its blocks because the steps in
flight will give back enough (a request aborted while a step holding it is
in flight: its blocks are pending), no request ranked below it takes a block
in that step, and admission waits: otherwise a lower-ranked decode takes the
free block the better-ranked prefill chunk is waiting to combine with the
pending ones. The traffic: a high-priority prompt prefilled in chunks of two
blocks, a low-priority decode that needs one block at the same step, one free
block and two pending.
"""

from __future__ import annotations

import pytest

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.policies import PriorityPolicy
from tokensched.views import PlanOutcome


@pytest.mark.parametrize("fast_decode", [True, False])
def test_a_starved_request_keeps_lower_ranked_ones_from_its_blocks(fast_decode: bool) -> None:
    config = SchedulerConfig(
        num_blocks=8,
        block_size=4,
        max_batched_tokens=16,
        long_prefill_chunk=8,
        max_steps_in_flight=2,
        max_model_len=64,
        enable_prefix_caching=False,
        admission_reserve=0.0,
    )
    s = Scheduler(config, PriorityPolicy(), clock=lambda: 0.0, fast_decode=fast_decode)
    s.submit(RequestSpec(request_id="r", prompt_token_ids=list(range(1, 25)), max_tokens=2, priority=0))
    s.submit(RequestSpec(request_id="l", prompt_token_ids=[1, 2, 3], max_tokens=20, priority=5))
    s.submit(RequestSpec(request_id="d", prompt_token_ids=[1, 2, 3, 4], max_tokens=20, priority=5))
    p0 = s.plan()
    assert p0 is not None and [n.request_id for n in p0.new_requests] == ["r", "l", "d"]
    p1 = s.plan()  # r's second chunk (two blocks), l's decode (no block), d's decode (one block)
    assert p1 is not None and p1.request_ids == ["r", "l", "d"] and p1.new_block_ids == [(4, 5), (), (6,)]
    s.submit(RequestSpec(request_id="w", prompt_token_ids=[1], max_tokens=1, priority=9))  # one block would do
    s.abort("d")  # its two blocks stay pending until step 1, which holds it, completes
    s.complete(StepResult(p0.step_id, [[], [9], [9]]))
    assert (s.pool.num_free, s.pool.num_pending) == (1, 2)
    l_blocks = len(s.running["l"].state.blocks)  # type: ignore[union-attr]

    # r's third chunk needs two blocks: one is free, two are pending, so it waits for step 1 (no preemption);
    # l needs one block for position 4 and one is free, but r is ranked above it; w would fit too, but waits.
    assert s.plan() is None and s.last_plan_outcome is PlanOutcome.BLOCKED
    assert s.pool.num_free == 1 and len(s.running["l"].state.blocks) == l_blocks  # type: ignore[union-attr]
    assert [r.request_id for r in s.waiting] == ["w"] and s.stats().num_preemptions == 0

    s.complete(StepResult(p1.step_id, [[], [9], [9]]))  # d's blocks come back
    p2 = s.plan()
    assert p2 is not None and p2.request_ids[:2] == ["r", "l"]
    assert len(p2.new_block_ids[0]) == 2  # r gets its blocks first
