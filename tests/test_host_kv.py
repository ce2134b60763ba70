"""The scheduler with a host KV tier: a session's prefix goes to host when the device needs room and comes back."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepPlan, StepResult
from tokensched.machines.blocks import BlockState
from tokensched.machines.host_tier import SlotState
from tokensched.plan import TransferKind

BS = 4
PROMPT_A = list(range(1, 17))  # four full blocks


def make(host_kv_blocks: int = 8, **overrides: object) -> Scheduler:
    settings: dict[str, object] = {
        "num_blocks": 8,
        "block_size": BS,
        "max_batched_tokens": 64,
        "max_model_len": 64,
        "host_kv_blocks": host_kv_blocks,
        "admission_reserve": 0.0,
    }
    settings.update(overrides)
    return Scheduler(SchedulerConfig.model_validate(settings), clock=lambda: 0.0)


def spec(rid: str, prompt: list[int], max_tokens: int = 1) -> RequestSpec:
    return RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=max_tokens)


def step(s: Scheduler) -> StepPlan:
    plan = s.plan()
    assert plan is not None
    s.complete(StepResult(plan.step_id, [[7] if x else [] for x in plan.sample]))
    s.check_invariants()
    return plan


def run(s: Scheduler) -> list[StepPlan]:
    plans = []
    while s.has_work:
        plans.append(step(s))
    return plans


def evict_a_to_host(s: Scheduler) -> None:
    """A runs and finishes; B's step writes A's cached blocks back; C's prompt then evicts them from the device."""
    s.submit(spec("a", PROMPT_A))
    run(s)
    s.submit(spec("b", [90, 91]))
    stores = [t for p in run(s) for t in p.kv_transfers if t.kind is TransferKind.STORE]
    assert len(stores) == 4, stores
    s.submit(spec("c", list(range(40, 68))))  # seven blocks: the device keeps none of A's
    run(s)
    hashes: list[int] = []
    s.hasher.extend(hashes, PROMPT_A, s.hasher.root(None))
    assert s.pool.match_prefix(hashes, PROMPT_A, s.pool.root(None)) == []


def test_the_host_tier_is_off_by_default_and_validated() -> None:
    assert SchedulerConfig(num_blocks=4).host_kv_blocks == 0
    assert Scheduler(SchedulerConfig(num_blocks=4)).host is None
    with pytest.raises(ValidationError, match="host_kv_blocks=4 needs enable_prefix_caching"):
        SchedulerConfig(num_blocks=4, host_kv_blocks=4, enable_prefix_caching=False)
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        SchedulerConfig(num_blocks=4, host_kv_blocks=-1)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        SchedulerConfig(num_blocks=4, host_kv_blocks=4, host_transfer_blocks=0)


def test_a_prefix_evicted_from_the_device_is_loaded_back_from_host() -> None:
    s = make()
    evict_a_to_host(s)
    s.submit(spec("a2", [*PROMPT_A, 20, 21], max_tokens=2))
    plan = s.plan()
    assert plan is not None
    loads = [t for t in plan.kv_transfers if t.kind is TransferKind.LOAD]
    (new,) = plan.new_requests
    assert [t.device_block for t in loads] == list(new.block_ids[:4])
    assert new.num_cached_tokens == 16 and plan.num_computed_tokens == [16]
    for t in loads:  # not matchable before the load's step completes
        assert s.pool.state(t.device_block) is BlockState.OWNED
        assert s.host is not None and s.host.tier.state(t.host_slot) is SlotState.LOADING
    s.check_invariants()
    s.complete(StepResult(plan.step_id, [[7]]))
    s.check_invariants()
    for t in loads:  # committed like computed blocks, and the host keeps its copy
        assert s.pool.state(t.device_block) is BlockState.COMMITTED
        assert s.host is not None and s.host.tier.state(t.host_slot) is SlotState.RESIDENT
    run(s)
    s.submit(spec("a3", [*PROMPT_A, 20, 21, 7, 7, 30]))
    plan = step(s)
    assert plan.new_requests[0].num_cached_tokens == 16  # a device hit now: the loaded blocks were committed
    assert not [t for t in plan.kv_transfers if t.kind is TransferKind.LOAD]


def test_without_a_host_tier_the_prefix_is_recomputed() -> None:
    s = make(host_kv_blocks=0)
    s.submit(spec("a", PROMPT_A))
    run(s)
    s.submit(spec("b", [90, 91]))
    run(s)
    s.submit(spec("c", list(range(40, 68))))
    run(s)
    s.submit(spec("a2", [*PROMPT_A, 20, 21]))
    plan = step(s)
    assert plan.new_requests[0].num_cached_tokens == 4 and not plan.kv_transfers  # one of A's four blocks survived


class NeverLoad:
    def load_is_cheaper(self, num_blocks: int, block_size: int, context_tokens: int) -> bool:
        return False


def test_the_load_cost_hook_can_prefer_recompute() -> None:
    config = make().config
    s = Scheduler(config, clock=lambda: 0.0, load_cost=NeverLoad())
    evict_a_to_host(s)
    s.submit(spec("a2", [*PROMPT_A, 20, 21]))
    plan = step(s)
    assert plan.new_requests[0].num_cached_tokens == 0
    assert not [t for t in plan.kv_transfers if t.kind is TransferKind.LOAD]


def test_a_failed_step_leaves_the_host_copy_and_recomputes() -> None:
    s = make(max_step_retries=1)
    evict_a_to_host(s)
    s.submit(spec("a2", [*PROMPT_A, 20, 21]))
    plan = s.plan()
    assert plan is not None and plan.kv_transfers
    s.fail(plan.step_id, RuntimeError("boom"))
    s.check_invariants()
    assert s.host is not None
    for t in plan.kv_transfers:  # a failed load leaves its copy; a failed store frees its slot
        want = SlotState.RESIDENT if t.kind is TransferKind.LOAD else SlotState.FREE
        assert s.host.tier.state(t.host_slot) is want
    retry = step(s)  # rolled back, readmitted: loads again from the intact host copies
    assert retry.new_requests[0].num_cached_tokens == 16
    run(s)


def test_transfers_per_step_stay_within_the_budget() -> None:
    s = make(host_transfer_blocks=1)
    s.submit(spec("a", PROMPT_A))
    run(s)
    s.submit(spec("b", [90, 91], max_tokens=6))
    plans = run(s)
    assert all(len(p.kv_transfers) <= 1 for p in plans)
    assert sum(len(p.kv_transfers) for p in plans) == 4  # one a step, over B's steps
