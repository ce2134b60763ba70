"""The scheduler's behaviours, one by one, with a hand-driven loop."""

from __future__ import annotations

import pytest

from tokensched import (
    PLACEHOLDER_TOKEN,
    CapacityError,
    Engine,
    ExecutorError,
    FinishReason,
    IllegalTransition,
    InvalidRequest,
    PlanOutcome,
    QueueFull,
    RequestEvent,
    RequestOutput,
    RequestSpec,
    Scheduler,
    SchedulerConfig,
    StepPlan,
    StepResult,
    UnknownRequest,
)
from tokensched.machines.blocks import BlockState
from tokensched.machines.request import Decoding, Preempted, Prefilling, held_blocks
from tokensched.policies import PriorityPolicy
from tokensched.testing import FakeExecutor


def make(**overrides: object) -> Scheduler:
    settings: dict[str, object] = {"num_blocks": 32, "block_size": 4, "max_batched_tokens": 16, "max_model_len": 512}
    settings.update(overrides)
    return Scheduler(SchedulerConfig.model_validate(settings), clock=lambda: 0.0)


def spec(rid: str, prompt: list[int], max_tokens: int = 4, **kw: object) -> RequestSpec:
    return RequestSpec.model_validate({"request_id": rid, "prompt_token_ids": prompt, "max_tokens": max_tokens, **kw})


def answer(plan: StepPlan, token: int = 5) -> StepResult:
    return StepResult(plan.step_id, [[token] if s else [] for s in plan.sample])


def run_to_end(s: Scheduler, token: int = 5) -> list[RequestOutput]:
    outputs: list[RequestOutput] = []
    for _ in range(1000):
        plan = s.plan()
        if plan is None:
            break
        outputs += s.complete(answer(plan, token))
        s.check_invariants()
    assert not s.has_work
    return outputs


def next_plan(s: Scheduler) -> StepPlan:
    plan = s.plan()
    assert plan is not None
    return plan


def rows(plan: StepPlan) -> dict[str, tuple[int, list[int]]]:
    return {
        rid: (plan.num_computed_tokens[i], plan.token_ids[plan.token_offsets[i] : plan.token_offsets[i + 1]])
        for i, rid in enumerate(plan.request_ids)
    }


# ---------------------------------------------------------------- intake
def test_submit_refuses_bad_requests_and_changes_nothing() -> None:
    s = make(num_blocks=8, max_waiting=1)
    with pytest.raises(InvalidRequest, match="max_model_len"):
        s.submit(spec("a", [1] * 500, max_tokens=100))
    with pytest.raises(CapacityError, match="can never fit"):
        s.submit(spec("b", [1] * 40, max_tokens=10))
    s.submit(spec("c", [1, 2, 3]))
    with pytest.raises(InvalidRequest, match="already has this id"):
        s.submit(spec("c", [1, 2, 3]))
    with pytest.raises(QueueFull):
        s.submit(spec("d", [1, 2, 3]))
    assert list(s.live) == ["c"]
    s.check_invariants()


def test_submit_refuses_token_ids_past_the_vocabulary_and_changes_nothing() -> None:
    s = make(num_blocks=64, vocab_size=100)
    with pytest.raises(InvalidRequest, match=r"position 2 holds token id 100, not below vocab_size \(100\)"):
        s.submit(spec("a", [5, 99, 100, 7, 200]))
    with pytest.raises(InvalidRequest, match="stop/eos token id 150"):
        s.submit(spec("a", [5, 6], stop_token_ids=frozenset({3, 150})))
    with pytest.raises(InvalidRequest, match="stop/eos token id 100"):
        s.submit(spec("a", [5, 6], eos_token_id=100))
    assert not s.live and not s.waiting and s.stats().num_waiting == 0
    s.submit(spec("a", [5, 99], eos_token_id=99))
    assert list(s.live) == ["a"]
    s.check_invariants()


def test_request_spec_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="prompt_token_ids"):
        spec("a", [])
    with pytest.raises(ValueError, match="prompt_token_ids"):
        spec("a", [-1])
    with pytest.raises(ValueError, match="top_p"):
        spec("a", [1], sampling={"top_p": 0.0})
    with pytest.raises(ValueError, match="max_tokens"):
        spec("a", [1], max_tokens=0)


def test_unknown_request_abort_raises() -> None:
    with pytest.raises(UnknownRequest, match="nope"):
        make().abort("nope")


# ------------------------------------------------------------- batching
def test_prefill_is_chunked_and_decodes_keep_running() -> None:
    s = make(num_blocks=64, max_batched_tokens=8)
    s.submit(spec("short", [1, 2, 3], max_tokens=20))
    s.complete(answer(s.plan()))  # short prefilled, now decoding
    s.submit(spec("long", list(range(100, 140)), max_tokens=2))
    chunks = []
    while True:
        plan = s.plan()
        assert plan is not None
        got = rows(plan)
        assert "short" in got, "a decode was held back for a prefill"
        assert plan.num_tokens <= 8
        chunks.append(len(got.get("long", (0, []))[1]))
        s.complete(answer(plan))
        if type(s.get("long").state) is Decoding:
            break
    assert sum(chunks) == 40 and max(chunks) == 7  # 8-token budget minus the decode


def test_long_prefill_chunk_caps_one_request() -> None:
    s = make(num_blocks=64, max_batched_tokens=16, long_prefill_chunk=5)
    s.submit(spec("a", list(range(1, 13))))
    sizes = []
    while type(s.get("a").state) is not Decoding:
        plan = s.plan()
        assert plan is not None
        sizes.append(plan.num_tokens)
        s.complete(answer(plan))
    assert sizes == [5, 5, 2]


def test_max_running_limits_admission() -> None:
    s = make(max_running=2)
    for i in range(3):
        s.submit(spec(f"r{i}", [1, 2]))
    plan = s.plan()
    assert plan is not None and plan.request_ids == ["r0", "r1"]


# --------------------------------------------------------- stop conditions
def test_stop_conditions() -> None:
    s = make()
    s.submit(spec("eos", [1, 2], max_tokens=10, eos_token_id=9))
    s.submit(spec("ignore", [1, 2], max_tokens=3, eos_token_id=9, ignore_eos=True))
    s.submit(spec("stop", [1, 2], max_tokens=10, stop_token_ids=[9]))
    outs = run_to_end(s, token=9)
    finished = {o.request_id: (o.finish_reason, o.num_output_tokens) for o in outs if o.finished}
    assert finished == {
        "eos": (FinishReason.STOP, 1),
        "ignore": (FinishReason.LENGTH, 3),
        "stop": (FinishReason.STOP, 1),
    }


def test_max_model_len_finishes_with_length() -> None:
    s = make(max_model_len=6)
    s.submit(spec("a", [1, 2, 3, 4], max_tokens=2))
    outs = run_to_end(s)
    assert outs[-1].finish_reason is FinishReason.LENGTH and outs[-1].num_output_tokens == 2


# ------------------------------------------------------------ prefix cache
def test_session_turn_reuses_prompt_and_answer_blocks() -> None:
    s = make(num_blocks=64)
    first = list(range(1, 18))  # 17 tokens: 4 full blocks
    s.submit(spec("t1", first, max_tokens=4, session_id="s"))
    run_to_end(s, token=7)
    second = [*first, 7, 7, 7, 7, 50, 51]
    s.submit(spec("t2", second, max_tokens=1, session_id="s"))
    plan = s.plan()
    assert plan is not None
    new = plan.new_requests[0]
    # prompt + 3 computed answer tokens = 20 positions = 5 full blocks cached
    assert new.num_cached_tokens == 20
    assert plan.num_computed_tokens == [20] and plan.token_ids == second[20:]
    assert s.stats().prefix_hit_tokens == 20


def test_identical_prompt_shares_committed_blocks() -> None:
    s = make(num_blocks=64)
    s.submit(spec("a", list(range(1, 10)), max_tokens=8))
    s.complete(answer(s.plan()))
    s.submit(spec("b", list(range(1, 10)), max_tokens=1))
    plan = s.plan()
    assert plan is not None and plan.new_requests[0].num_cached_tokens == 8
    shared = held_blocks(s.get("a").state)[:2]
    assert held_blocks(s.get("b").state)[:2] == shared
    assert [s.pool.refcount(b) for b in shared] == [2, 2]
    s.check_invariants()


def test_whole_prompt_cached_still_computes_last_token() -> None:
    s = make(num_blocks=64)
    s.submit(spec("a", list(range(1, 9)), max_tokens=4))
    run_to_end(s)
    s.submit(spec("b", list(range(1, 9)), max_tokens=1))
    plan = s.plan()
    assert plan is not None
    assert plan.new_requests[0].num_cached_tokens == 4 and plan.token_ids == [5, 6, 7, 8]


def test_prefix_caching_off_shares_nothing() -> None:
    s = make(enable_prefix_caching=False)
    s.submit(spec("a", list(range(1, 10))))
    run_to_end(s)
    s.submit(spec("b", list(range(1, 10))))
    plan = s.plan()
    assert plan is not None and plan.new_requests[0].num_cached_tokens == 0
    assert s.pool.counts()[BlockState.EVICTABLE] == 0


# ------------------------------------------------------------- preemption
def test_preemption_by_recompute_then_resume() -> None:
    s = make(num_blocks=6, block_size=2, max_batched_tokens=32)
    s.submit(spec("old", [1, 2, 3], max_tokens=6))
    s.submit(spec("new", [4, 5, 6], max_tokens=6))
    preempted = False
    resumed_with_outputs = False
    outputs: list[RequestOutput] = []
    for _ in range(100):
        plan = s.plan()
        if plan is None:
            break
        preempted |= s.stats().num_preemptions > 0
        if preempted and "new" in {n.request_id for n in plan.new_requests}:
            resumed = next(n for n in plan.new_requests if n.request_id == "new")
            resumed_with_outputs |= resumed.num_output_tokens > 0  # prompt and outputs so far are recomputed
            assert len(resumed.token_ids) == 3 + resumed.num_output_tokens
        outputs += s.complete(answer(plan))
        s.check_invariants()
    assert preempted, "the pool was too small for both: someone had to be preempted"
    assert resumed_with_outputs
    done = {o.request_id: o.num_output_tokens for o in outputs if o.finished}
    assert done == {"old": 6, "new": 6}


def test_priority_policy_preempts_the_least_urgent() -> None:
    s = Scheduler(
        SchedulerConfig(num_blocks=6, block_size=2, max_batched_tokens=32, max_model_len=64),
        policy=PriorityPolicy(),
        clock=lambda: 0.0,
    )
    s.submit(spec("low", [1, 2, 3], max_tokens=6, priority=5))
    s.submit(spec("high", [4, 5, 6], max_tokens=6, priority=0))
    for _ in range(100):
        plan = s.plan()
        if plan is None:
            break
        s.complete(answer(plan))
        if s.stats().num_preemptions:
            break
    assert isinstance(s.get("low").state, Preempted)
    assert isinstance(s.get("high").state, Prefilling | Decoding)


# ---------------------------------------------------------------- overlap
def test_overlap_uses_placeholders_and_discards_work_of_finished_requests() -> None:
    s = make(max_steps_in_flight=2)
    s.submit(spec("a", [1, 2, 3], max_tokens=5, eos_token_id=9))
    p0 = s.plan()
    p1 = s.plan()
    assert p0 is not None and p1 is not None
    assert s.plan() is None, "two steps in flight is the limit"
    assert rows(p1)["a"] == (3, [PLACEHOLDER_TOKEN])
    outs = s.complete(answer(p0, token=9))  # EOS: finished while p1 is in flight
    assert outs[0].finish_reason is FinishReason.STOP
    held = s.pool.num_pending
    assert held == 1, "the block p1 writes into must not be handed out while p1 runs"
    s.check_invariants()
    assert s.complete(answer(p1)) == []  # discarded
    assert s.pool.num_pending == 0
    s.check_invariants()


def test_results_must_arrive_in_order() -> None:
    s = make(max_steps_in_flight=2)
    s.submit(spec("a", [1, 2, 3]))
    p0, p1 = s.plan(), s.plan()
    assert p0 is not None and p1 is not None
    with pytest.raises(InvalidRequest, match="in order"):
        s.complete(answer(p1))
    s.complete(answer(p0))
    s.complete(answer(p1))


def test_max_tokens_counts_steps_in_flight() -> None:
    s = make(max_steps_in_flight=3)
    s.submit(spec("a", [1, 2, 3], max_tokens=2))
    plans = [s.plan(), s.plan(), s.plan()]
    assert plans[2] is None, "a third step would sample past max_tokens"


# ----------------------------------------------------------- speculation
def test_speculative_drafts_accepted_prefix_and_rollback() -> None:
    s = make(num_blocks=32, block_size=2, num_speculative_tokens=3)
    s.submit(spec("a", [1, 2, 3], max_tokens=20))
    p = s.plan()
    assert p is not None
    s.complete(StepResult(p.step_id, [[10]], draft_token_ids=[[11, 12, 13]]))
    p = s.plan()
    assert p is not None
    assert rows(p)["a"] == (3, [10, 11, 12, 13]) and p.draft_token_ids == [(11, 12, 13)]
    blocks_before = len(held_blocks(s.get("a").state))
    assert blocks_before == 4  # positions 0..6
    outs = s.complete(StepResult(p.step_id, [[11, 99]], draft_token_ids=[[1, 1, 1]]))  # 1 accepted + bonus
    assert outs[0].new_token_ids == [11, 99]
    state = s.get("a").state
    assert isinstance(state, Decoding) and state.num_computed == 5
    assert len(state.blocks) == 3, "the block holding only rejected drafts went back"
    p = s.plan()
    assert p is not None and p.truncated_block_tables == {"a": 3}
    s.check_invariants()


def test_speculative_accept_count_is_validated() -> None:
    s = make(num_speculative_tokens=2)
    s.submit(spec("a", [1, 2, 3], max_tokens=20))
    p = s.plan()
    assert p is not None
    with pytest.raises(InvalidRequest, match="expected 1 to 1"):
        s.complete(StepResult(p.step_id, [[1, 2]]))


# ----------------------------------------------------------------- faults
@pytest.mark.parametrize("policy", ["retry", "error"])
def test_failed_step_retries_or_errors_without_leaks(policy: str) -> None:
    s = make(on_step_failure=policy, max_step_retries=1)
    s.submit(spec("a", [1, 2, 3]))
    p = s.plan()
    assert p is not None
    outs = s.fail(p.step_id, RuntimeError("boom"))
    s.check_invariants()
    if policy == "error":
        assert [o.finish_reason for o in outs] == [FinishReason.ERROR]
        assert not s.has_work
    else:
        assert [(o.request_id, o.event, o.finish_reason) for o in outs] == [("a", RequestEvent.ROLLED_BACK, None)]
        assert isinstance(s.get("a").state, Preempted)
        run_to_end(s)
    assert s.pool.counts()[BlockState.OWNED] == 0


def test_engine_reports_executor_failures_through_fail() -> None:
    ex = FakeExecutor(num_kv_blocks=32, block_size=4, fail_prob=1.0)
    engine = Engine.create(ex, on_step_failure="error")
    engine.scheduler.submit(spec("a", [1, 2, 3]))
    outs = [o for step in engine.run() for o in step]
    assert [o.finish_reason for o in outs] == [FinishReason.ERROR]
    with pytest.raises(ExecutorError):
        raise ExecutorError(0, "the error type carries its step id")


def test_abort_while_in_flight_holds_blocks_until_the_step_completes() -> None:
    s = make()
    s.submit(spec("a", [1, 2, 3, 4, 5]))
    p = s.plan()
    assert p is not None
    out = s.abort("a")
    assert out.finish_reason is FinishReason.ABORT
    assert s.pool.num_pending == 2 and s.pool.num_free == 30
    assert s.complete(answer(p)) == []
    assert s.pool.num_free == 32
    p2 = s.plan()
    assert p2 is None
    s.submit(spec("b", [1]))
    p3 = s.plan()
    assert p3 is not None and p3.removed_request_ids == ("a",)


def test_illegal_transition_names_request_state_and_event() -> None:
    s = make()
    s.submit(spec("a", [1, 2]))
    request = s.get("a")
    from tokensched.machines.request import Finished, transition

    with pytest.raises(IllegalTransition, match=r"request 'a'.*'first_token'.*'waiting'"):
        transition(request, "first_token", Decoding([], 0, 0, 0, 0))
    assert not isinstance(request.state, Finished)


# ------------------------------------------------------- session retention
def retention_scheduler(now: list[float]) -> Scheduler:
    return Scheduler(
        SchedulerConfig(
            num_blocks=12, block_size=4, max_batched_tokens=64, max_model_len=64, session_kv_retention_s=5.0
        ),
        clock=lambda: now[0],
    )


def test_retention_keeps_a_finished_turn_for_its_session_while_others_run() -> None:
    now = [0.0]
    s = retention_scheduler(now)
    s.submit(spec("busy", [9, 9, 9], max_tokens=30))  # keeps the scheduler from being idle
    s.submit(spec("t1", list(range(1, 21)), max_tokens=1, session_id="s"))  # 20 tokens: 5 blocks
    plan = s.plan()
    assert plan is not None
    s.complete(answer(plan))  # t1 finishes; its 5 blocks stay cached, protected for session "s"
    assert s.pool.counts()[BlockState.EVICTABLE] == 5
    s.submit(spec("cold", list(range(30, 54)), max_tokens=1))  # 6 blocks: fits only by evicting t1's
    plan = s.plan()
    assert plan is not None and "cold" not in plan.request_ids, "a cold request evicted a retained session"
    s.complete(answer(plan))
    s.submit(spec("t2", [*range(1, 21), 5, 60, 61], max_tokens=1, session_id="s"))
    plan = s.plan()
    assert plan is not None
    warm = next(n for n in plan.new_requests if n.request_id == "t2")
    assert warm.num_cached_tokens == 20, "the session's next turn found its history cached"
    s.check_invariants()


def test_retention_ends_after_its_window_so_nothing_starves() -> None:
    now = [0.0]
    s = retention_scheduler(now)
    s.submit(spec("busy", [9, 9, 9], max_tokens=30))
    s.submit(spec("t1", list(range(1, 21)), max_tokens=1, session_id="s"))
    s.complete(answer(s.plan()))  # type: ignore[arg-type]
    s.submit(spec("cold", list(range(30, 54)), max_tokens=1))
    plan = s.plan()
    assert plan is not None and "cold" not in plan.request_ids
    s.complete(answer(plan))
    now[0] = 5.5  # past the window
    plan = s.plan()
    assert plan is not None and "cold" in plan.request_ids
    s.check_invariants()


def test_retention_never_idles_the_scheduler() -> None:
    now = [0.0]
    s = retention_scheduler(now)
    s.submit(spec("t1", list(range(1, 21)), max_tokens=1, session_id="s"))
    s.complete(answer(s.plan()))  # type: ignore[arg-type]
    s.submit(spec("cold", list(range(30, 60)), max_tokens=1))  # needs 8 blocks: evicts t1's to run now
    plan = s.plan()
    assert plan is not None and plan.request_ids == ["cold"]


def test_remembered_sessions_are_bounded_and_forgetting_one_only_costs_rehashing() -> None:
    s = make(num_blocks=64, max_remembered_sessions=1)
    for sid in ("a", "b"):
        s.submit(spec(f"{sid}1", list(range(1, 18)), max_tokens=1, session_id=sid))
        run_to_end(s)
    assert list(s.matcher._sessions) == ["b"]
    s.submit(spec("a2", [*range(1, 18), 5, 9], max_tokens=1, session_id="a"))  # "a" was forgotten
    plan = s.plan()
    assert plan is not None and plan.new_requests[0].num_cached_tokens == 16  # the cache still serves it


def test_releasing_a_block_more_often_than_it_is_held_is_refused_and_changes_nothing() -> None:
    from tokensched.machines.blocks import BlockPool

    pool = BlockPool(2)
    block = pool.allocate_one()
    with pytest.raises(IllegalTransition, match="2 releases, refcount 1"):
        pool.release([block, block], None)
    assert pool.refcount(block) == 1 and pool.state(block) is BlockState.OWNED
    pool.check_invariants({block: 1})


# ------------------------------------------- regressions (issue 13, reproduced)
def _preemptions_while_running(s: Scheduler, plan: StepPlan) -> list[tuple[str, str]]:
    """(victim, kept) pairs of this plan where the preempted request ranks above one that keeps running."""
    key = s.policy.victim_key
    ctx = s.policy_context()
    victims = [s.live[rid] for rid in plan.removed_request_ids if isinstance(s.live[rid].state, Preempted)]
    return [(v.request_id, k.request_id) for v in victims for k in s.running.values() if key(v, ctx) < key(k, ctx)]


def test_priority_victim_is_the_lowest_priority_request_even_if_it_was_admitted_first() -> None:
    """Issue 13 (1): `low` was admitted first; running out of blocks must preempt it, never a `high`."""
    config = SchedulerConfig(num_blocks=7, block_size=2, max_steps_in_flight=1)
    s = Scheduler(config, policy=PriorityPolicy(), clock=lambda: 0.0)
    s.submit(spec("low", [1, 2, 3], max_tokens=10, priority=5))
    s.complete(answer(next_plan(s)))
    s.submit(spec("high1", [4, 5, 6], max_tokens=10, priority=0))
    s.submit(spec("high2", [7, 8, 9], max_tokens=10, priority=0))
    preempted: list[str] = []
    for _ in range(4):
        plan = next_plan(s)
        assert _preemptions_while_running(s, plan) == []
        preempted += [rid for rid in plan.removed_request_ids if isinstance(s.live[rid].state, Preempted)]
        s.complete(answer(plan))
        s.check_invariants()
    assert preempted == ["low"]
    assert run_to_end(s)


def test_a_request_short_of_blocks_waits_for_the_steps_in_flight_instead_of_preempting_itself() -> None:
    """Issue 13 (2): FCFS, two steps in flight; `old` must never be preempted while `new` runs."""
    s = make(num_blocks=12, block_size=16, max_batched_tokens=8192, enable_prefix_caching=False)
    s.submit(spec("old", [1] * 80, max_tokens=40))
    launched = [next_plan(s)]
    s.submit(spec("new", [2] * 79, max_tokens=40))
    launched.append(next_plan(s))
    finished: list[str] = []
    for _ in range(200):
        if not launched:
            break
        for out in s.complete(answer(launched.pop(0))):
            if out.finished:
                finished.append(out.request_id)
        s.check_invariants()
        plan = s.plan()
        if plan is not None:
            if "old" in s.live:
                assert not isinstance(s.live["old"].state, Preempted), f"step {plan.step_id} preempted old"
            launched.append(plan)
    assert finished == ["old", "new"]
    assert s.stats().num_preemptions == 1  # `new` yields once


def test_capacity_check_with_speculation_counts_the_room_drafts_are_capped_at() -> None:
    """Issue 13 (3): drafts never outgrow prompt + max_tokens - 1 positions, so 29 + 4 tokens fit 8 blocks of 4."""
    s = make(num_blocks=8, block_size=4, num_speculative_tokens=3)
    s.submit(spec("a", list(range(1, 30)), max_tokens=4))
    with pytest.raises(CapacityError, match="needs up to 9 KV blocks"):
        s.submit(spec("b", list(range(1, 31)), max_tokens=4))
    executor = FakeExecutor(num_kv_blocks=8, block_size=4, seed=1, vocab_size=50, num_drafts=3, accept_prob=1.0)
    outputs = [out for outs in Engine(s, executor).run() for out in outs]
    assert sum(len(out.new_token_ids) for out in outputs) == 4
    assert outputs[-1].finish_reason is FinishReason.LENGTH


# ------------------------------------------------- an API that says what happened
def test_a_preempted_request_is_told_with_the_next_complete() -> None:
    config = SchedulerConfig(num_blocks=7, block_size=2, max_steps_in_flight=1)
    s = Scheduler(config, policy=PriorityPolicy(), clock=lambda: 0.0)
    s.submit(spec("low", [1, 2, 3], max_tokens=10, priority=5))
    s.complete(answer(next_plan(s)))
    s.submit(spec("high1", [4, 5, 6], max_tokens=10, priority=0))
    s.submit(spec("high2", [7, 8, 9], max_tokens=10, priority=0))
    events: list[RequestOutput] = []
    for _ in range(3):
        plan = next_plan(s)
        events += [o for o in s.complete(answer(plan)) if o.event is not None]
    assert [(e.request_id, e.event, e.new_token_ids, e.finished) for e in events] == [
        ("low", RequestEvent.PREEMPTED, [], False)
    ]
    assert s.request_view("low").state == "preempted" and s.request_view("low").num_preemptions == 1
    assert [v.request_id for v in s.waiting_requests()] == ["low"]
    assert {v.request_id for v in s.running_requests()} == {"high1", "high2"}


def test_plan_says_why_it_planned_nothing() -> None:
    s = make(max_steps_in_flight=1)
    assert s.plan() is None and s.last_plan_outcome is PlanOutcome.IDLE
    s.submit(spec("a", [1, 2, 3]))
    plan = next_plan(s)
    assert s.last_plan_outcome is PlanOutcome.PLANNED
    assert s.plan() is None and s.last_plan_outcome is PlanOutcome.WINDOW_FULL
    s.complete(answer(plan))
    # Two in flight, one decode: the second plan has nothing new until the first completes.
    s = make(max_steps_in_flight=2, num_speculative_tokens=1)
    s.submit(spec("a", [1, 2, 3]))
    next_plan(s)
    assert s.plan() is None and s.last_plan_outcome is PlanOutcome.BLOCKED


def test_stats_balance_the_pool() -> None:
    s = make(num_blocks=16, block_size=2)
    s.submit(spec("a", [1, 2, 3, 4, 5], max_tokens=2))
    s.submit(spec("b", [1, 2, 3, 4, 6], max_tokens=2))
    first = next_plan(s)
    s.abort("b")  # its blocks wait PENDING for the step in flight
    stats = s.stats()
    assert stats.num_pending_blocks > 0 and stats.num_held_blocks > 0
    assert sum(stats.pool_balance) == 16
    s.complete(answer(first))
    run_to_end(s)
    stats = s.stats()
    assert stats.num_evictable_blocks > 0 and stats.num_held_blocks == 0
    assert stats.pool_balance == (16 - stats.num_evictable_blocks, stats.num_evictable_blocks, 0, 0)


def test_admission_reserve_is_a_config_field() -> None:
    assert SchedulerConfig(num_blocks=10).admission_reserve == 0.01
    with pytest.raises(ValueError, match="admission_reserve"):
        SchedulerConfig(num_blocks=10, admission_reserve=1.5)
    # 8 blocks: with a reserve of 1, a 2-block prompt beside 6 held blocks waits; with none it is admitted.
    for reserve, admitted in ((0.01, False), (0.0, True)):
        s = make(num_blocks=8, block_size=4, admission_reserve=reserve)
        s.submit(spec("a", [1] * 24, max_tokens=8))
        s.complete(answer(next_plan(s)))
        s.submit(spec("b", [2] * 8, max_tokens=1))
        plan = next_plan(s)
        assert ("b" in plan.request_ids) is admitted


def test_removed_ids_can_be_taken_when_no_plan_follows() -> None:
    s = make()
    s.submit(spec("a", [1, 2, 3], max_tokens=1))
    s.complete(answer(next_plan(s)))
    assert s.plan() is None and s.last_plan_outcome is PlanOutcome.IDLE
    assert s.take_removed() == ("a",)
    assert s.take_removed() == ()
    s.submit(spec("b", [1, 2, 3], max_tokens=1))
    assert next_plan(s).removed_request_ids == ()  # not repeated


def test_a_resumed_prefill_that_fills_a_block_and_samples_commits_on_its_decoding_state() -> None:
    """Found by the block-edge strategies: the fast commit path advanced the replaced Prefilling state.

    A decode defers hashing a block of outputs until its KV is computed; preempted just before, the
    request resumes with that block unhashed, and its recompute fills it and samples in one step.
    """
    s = make(block_size=2)
    s.submit(spec("a", [1, 2, 3], max_tokens=8))
    for _ in range(3):  # prefill, then two decodes: tokens [1, 2, 3, t, t, t], the last block not yet hashed
        s.complete(answer(next_plan(s)))
    s._preempt(s.get("a"))
    s.complete(answer(next_plan(s)))  # resumes from the cached prefix, computes positions 4 and 5, samples
    s.check_invariants()
    state = s.get("a").state
    assert isinstance(state, Decoding) and state.num_committed == 3


def test_no_run_while_a_prefix_just_committed_puts_a_fitting_request_at_the_head() -> None:
    """PrefixAware re-keys its queue from the cache's events: a run must not go on past a head they just moved.

    ``b`` is the head and does not fit; the step that completes ``a``'s
    prefill commits the prefix ``c`` repeats, so ``c`` moves ahead of ``b``
    and fits. Single steps admit ``c`` next, so no decode run may be offered.
    """
    from tokensched.policies import PrefixAwarePolicy

    s = Scheduler(
        SchedulerConfig(num_blocks=20, block_size=4, max_batched_tokens=16, max_model_len=512, max_steps_in_flight=1),
        PrefixAwarePolicy(),
        clock=lambda: 0.0,
    )
    shared = list(range(1, 13))  # 3 full blocks
    s.submit(spec("a", [*shared, 50, 51], max_tokens=20))  # its 4th block has room: its decodes need no new block
    s.submit(spec("b", list(range(100, 172)), max_tokens=4))  # 18 blocks: never beside a
    s.submit(spec("c", [*shared, 7, 7], max_tokens=4))
    first = next_plan(s)
    assert first.request_ids == ["a"]
    s.complete(answer(first))
    assert s.plan_run(8) is None  # (reading the queue here would re-key it: the run must do so itself)
    assert [r.request_id for r in s.waiting_requests()] == ["c", "b"]
    second = next_plan(s)
    assert "c" in second.request_ids
