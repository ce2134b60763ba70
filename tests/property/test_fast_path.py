"""The columnar decode path against the per-request path: identical plans, outputs, requests and pools.

Two schedulers get the same random traffic (submissions with shared
prefixes, sessions, eos and stop ids, small pools that force preemption,
aborts, failed steps, drafts, up to two steps in flight); one may take the
columnar decode path (``fast_decode=True``, the default), the other never does.
After every operation the plans, outputs and pool states must be equal, and
at random points (every read materialises the columns, so not after every
operation) the requests too.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from tests.twins import call, complete_oldest, plan_key, pool_key, request_key
from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.engine import Engine
from tokensched.errors import CapacityError, InvalidRequest
from tokensched.machines.request import Decoding
from tokensched.plan import RequestOutput, StepPlan
from tokensched.policies import PrefixAwarePolicy
from tokensched.run_replay import replay
from tokensched_sim import Deployment, SimExecutor

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4
VOCAB = 6  # small, so that sampled tokens hit eos and stop ids often

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 14), st.integers(1, 12), st.integers(0, 3), st.booleans()),
        *[st.tuples(st.just("step"), st.integers(0, 2**31 - 1))] * 6,
        st.tuples(st.just("plan")),
        st.tuples(st.just("complete"), st.integers(0, 2**31 - 1)),
        st.tuples(st.just("abort"), st.integers(0, 50)),
        st.tuples(st.just("fail")),
        st.tuples(st.just("check")),
    ),
    min_size=30,
    max_size=80,
)


def event(text: str) -> None:
    """A hypothesis event when a hypothesis test is running (``drive`` also serves plain tests)."""
    if currently_in_test_context():
        hypothesis_event(text)


@settings(
    max_examples=max(1, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=ops,
    num_blocks=st.sampled_from([10, 24, 40, 64]),
    in_flight=st.sampled_from([1, 1, 2]),
    k_spec=st.sampled_from([0, 0, 0, 2]),
    caching=st.booleans(),
    budget=st.sampled_from([3, 8, 16]),
)
def test_fast_path_equals_reference(
    ops: list[tuple[Any, ...]], num_blocks: int, in_flight: int, k_spec: int, caching: bool, budget: int
) -> None:
    fast_steps = drive_pair(ops, num_blocks, in_flight, k_spec, caching, budget)
    event(f"operations with decode columns live: {'some' if fast_steps else 'none'}")


@settings(
    max_examples=max(1, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=ops,
    num_blocks=st.sampled_from([10, 24, 40, 64]),
    in_flight=st.sampled_from([1, 1, 2]),
    k_spec=st.sampled_from([1, 2, 3]),
    caching=st.booleans(),
    budget=st.sampled_from([4, 8, 16]),  # room for a decode and 3 drafts
)
def test_speculative_rows_equal_reference(
    ops: list[tuple[Any, ...]], num_blocks: int, in_flight: int, k_spec: int, caching: bool, budget: int
) -> None:
    """The decode-row lanes (``tokensched.decode_rows``) under speculative decoding: every step mixes drafts,
    rejected drafts that roll back blocks, prefill chunks and stops, so the common row and the rare ones
    (handed to the per-request code) alternate within one step."""
    drive_pair(ops, num_blocks, in_flight, k_spec, caching, budget)


def drive_pair(
    ops: list[tuple[Any, ...]], num_blocks: int, in_flight: int, k_spec: int, caching: bool, budget: int
) -> int:
    """Run ``ops`` on a fast and a reference scheduler, asserting equal plans, outputs, pools and requests;
    returns how many operations found the decode columns live."""
    config = SchedulerConfig(
        num_blocks=num_blocks,
        block_size=BS,
        max_batched_tokens=budget,
        max_steps_in_flight=in_flight,
        max_model_len=40,
        num_speculative_tokens=k_spec,
        enable_prefix_caching=caching,
    )
    clock = [0.0]
    pair = [Scheduler(config, clock=lambda: clock[0], fast_decode=fast) for fast in (True, False)]
    plans: list[list[StepPlan]] = [[], []]
    fast_steps = 0
    seq = 0
    for op in ops:
        clock[0] += 0.5
        kind = op[0]
        got = []
        for which, s in enumerate(pair):
            if kind == "submit":
                _, length, max_tokens, prefix, eos = op
                prompt = [(seq * 3 + i) % VOCAB if i >= 6 else (prefix + i) % VOCAB for i in range(length)]
                spec = RequestSpec(
                    request_id=f"r{seq}",
                    prompt_token_ids=prompt,
                    max_tokens=max_tokens,
                    eos_token_id=0 if eos else None,
                    stop_token_ids=frozenset({5}) if seq % 3 == 0 else frozenset(),
                    session_id=f"s{prefix}" if seq % 2 else None,
                )
                got.append(call(s.submit, spec))
            elif kind in ("step", "plan"):
                plan = s.plan()
                got.append(plan_key(plan))
                if plan is not None:
                    plans[which].append(plan)
                if kind == "step" and plan is not None:
                    got.append(complete_oldest(s, plans[which], op[1], vocab=VOCAB, max_drafts=2))
            elif kind == "complete":
                got.append(complete_oldest(s, plans[which], op[1], vocab=VOCAB, max_drafts=2) if plans[which] else None)
            elif kind == "abort":
                live = sorted(s._live)
                got.append(call(s.abort, live[op[1] % len(live)]) if live else None)
            elif kind == "fail":
                if plans[which]:
                    got.append(list(s.fail(plans[which].pop(0).step_id, RuntimeError("lost"))))
            else:
                got.append(request_key(s))
            got.append(pool_key(s))
            if which == 0 and s._cols is not None:
                fast_steps += 1
        assert got[: len(got) // 2] == got[len(got) // 2 :], f"after {op}"
        seq += kind == "submit"
    assert request_key(pair[0]) == request_key(pair[1])
    for s in pair:
        s.check_invariants()
    return fast_steps


# ======================================================= multi-step decode runs
# Multi-step decode runs against single steps: identical outputs, clocks, requests and pools.
#
# Two engines over the simulated GPU get the same random traffic (arrivals on
# the virtual clock, shared prefixes and sessions, small pools that force
# preemption, speculative decoding with drafts, acceptance and rollback, or
# plain decoding with one step in flight). One takes a run of decode steps
# whenever the scheduler offers one (``Engine.step_run`` up to the next
# arrival, as the benchmark drives it), the other always single steps. Every
# step's outputs and end time must be equal, and at the end of every run the
# run engine's pool, requests and counters must equal the single-step
# engine's after the same number of steps.


RUN_BS = 16  # room for a step's 1 + 3 positions inside a block
arrivals = st.lists(
    st.tuples(
        st.floats(0.0, 2.0),  # arrival time, s
        st.integers(1, 30),  # new prompt tokens
        st.integers(1, 60),  # answer length (EOS forced there)
        st.integers(0, 2),  # session: 0 none, else continues session 1 or 2 (shared prefix)
        st.integers(0, 40),  # max_tokens beyond the answer (0: a length finish at the answer)
    ),
    min_size=1,
    max_size=8,
)


SESSION_TRAFFIC = st.lists(  # (arrival, new tokens, answer, session or 0, extra): sessions whose turns grow
    st.tuples(st.floats(0.0, 1.0), st.integers(10, 40), st.integers(20, 90), st.integers(0, 2), st.just(0)),
    min_size=4,
    max_size=10,
)


def build(
    spec_tokens: int,
    in_flight: int,
    blocks: int,
    budget: int,
    caching: bool,
    seed: int,
    prefix_aware: bool = False,
    retention_s: float | None = None,
) -> Engine:
    executor = SimExecutor(
        Deployment(model="dense-8b", gpu="h100", tp=1),
        block_size=RUN_BS,
        num_kv_blocks=blocks,
        num_speculative_tokens=spec_tokens,
        output_lengths={},
        seed=seed,
    )
    return Engine.create(
        executor,
        PrefixAwarePolicy() if prefix_aware else None,
        max_batched_tokens=budget,
        num_speculative_tokens=spec_tokens,
        max_steps_in_flight=in_flight,
        enable_prefix_caching=caching,
        max_model_len=400,
        session_kv_retention_s=retention_s if caching else None,
    )


def traffic(items: list[tuple[float, int, int, int, int]]) -> list[tuple[float, RequestSpec, int]]:
    """Specs in arrival order; a session's turn extends its previous prompt (so its prefix is cached)."""
    sessions: dict[int, list[int]] = {}
    out = []
    for n, (at, new, answer, session, extra) in enumerate(sorted(items)):
        context = [*sessions.get(session, []), *(7 + (n * 31 + j) % 50 for j in range(new))] if session else []
        if session:
            sessions[session] = context
        prompt = context if session else [7 + (n * 13 + j) % 50 for j in range(new)]
        spec = RequestSpec(
            request_id=f"r{n}",
            prompt_token_ids=prompt[-200:],
            max_tokens=answer + extra if extra else answer,
            eos_token_id=0,
            session_id=f"s{session}" if session else None,
            arrival_time=at,
        )
        out.append((at, spec, answer))
    return out


def count_rollbacks_inside_runs(scheduler: Scheduler) -> list[int]:
    """Count the rollbacks a run applies before its last step (by the run's own code, not :meth:`complete`).

    Wraps the scheduler's ``_roll_back_blocks`` and ``complete``: a rollback
    that releases a block while no ``complete`` call is on the stack is one
    that a run went on across. Returns the one-item counter.
    """
    count = [0]
    completing = [False]
    roll_back, complete = scheduler._roll_back_blocks, scheduler.complete

    def counting_roll_back(request: Any, state: Any) -> None:
        held = len(state.blocks)
        roll_back(request, state)
        if len(state.blocks) < held and not completing[0]:
            count[0] += 1

    def flagged_complete(result: StepResult) -> Any:
        completing[0] = True
        try:
            return complete(result)
        finally:
            completing[0] = False

    scheduler._roll_back_blocks = counting_roll_back  # type: ignore[method-assign]
    scheduler.complete = flagged_complete  # type: ignore[method-assign]
    return count


def flag_runs_past_a_heads_miss(scheduler: Scheduler) -> list[int]:
    """Count the runs whose last step left the free blocks above what the waiting head last missed with.

    Wraps the scheduler's ``complete_run``: replaying the result (as it
    does) gives the run's blocks allocated less those rolled back; below
    ``-admission_slack``, a rollback gave back a block the step in flight at
    the run's start took, and single steps would try the head at the next
    plan (the run must end there). Returns the one-item counter.
    """
    count = [0]
    complete_run = scheduler.complete_run

    def flagged(result: RunResult) -> Any:
        out = scheduler._run
        if out is not None:
            run = out[0]
            with contextlib.suppress(InvalidRequest):
                if replay(run, result).allocated < -run.admission_slack:
                    count[0] += 1
        return complete_run(result)

    scheduler.complete_run = flagged  # type: ignore[method-assign]
    return count


def drive(
    engine: Engine,
    specs: list[tuple[float, RequestSpec, int]],
    runs: bool,
    rollbacks_seen: list[int] | None = None,
    short_runs: list[int] | None = None,
) -> tuple[list[Any], list[Any]]:
    """Step ``engine`` through ``specs``; returns every step's (end time, outputs) and the state at checkpoints.

    ``rollbacks_seen`` gets, per run, how many rollbacks the run applied before its last step;
    ``short_runs`` the length of each run that started with the free blocks short of the victim-order reserve.
    """
    scheduler, executor = engine.scheduler, engine.executor
    assert isinstance(executor, SimExecutor)
    rollbacks = count_rollbacks_inside_runs(scheduler)
    past_a_miss = flag_runs_past_a_heads_miss(scheduler)
    lengths: dict[str, int] = executor.tokens._lengths  # type: ignore[assignment]
    pending = list(specs)
    steps: list[Any] = []
    marks: list[Any] = []
    for _ in range(5000):
        now = executor.now()
        while pending and pending[0][0] <= now:
            _, spec, answer = pending.pop(0)
            lengths[spec.request_id] = answer
            with contextlib.suppress(InvalidRequest, CapacityError):
                scheduler.submit(spec)
        if not scheduler.has_work:
            if not pending:
                break
            executor.wait_until(pending[0][0])
            continue
        until = pending[0][0] if pending else float("inf")
        held = {rid: len(r.state.blocks) for rid, r in scheduler.running.items() if type(r.state) is Decoding}
        committed = sum(map(len, (r.block_hashes for r in scheduler.running.values())))
        short = scheduler.pool.num_free < -(-scheduler.config.max_batched_tokens // RUN_BS) + len(scheduler.running)
        ran = engine.step_run(until) if runs else None
        if ran is None:
            outputs: Sequence[RequestOutput] = engine.step()
            steps.append((executor.now(), list(outputs)))
        else:
            event(f"run of {min(len(ran), 5)}+ steps")
            if short:
                event("run while the free blocks are short (rows served by victim key, in admission order)")
                if short_runs is not None:
                    short_runs.append(len(ran))
            if scheduler.waiting:
                event("run while a request waits")
                if scheduler.retained_sessions:
                    event("run while a request waits and a session is retained")
            if len(ran) > 1:
                running = scheduler.running
                grew = [rid for rid, n in held.items() if rid in running and len(running[rid].state.blocks) > n]  # type: ignore[union-attr]
                if grew:
                    event("a run allocated blocks")
                if sum(map(len, (r.block_hashes for r in running.values()))) > committed:
                    event("a run hashed blocks")
            if rollbacks[0]:
                event("a run went on across a rollback")
            if past_a_miss[0]:
                event("a run ended where a rollback lifted the free blocks past a waiting head's last miss")
                past_a_miss[0] = 0
            if rollbacks_seen is not None:
                rollbacks_seen.append(rollbacks[0])
            rollbacks[0] = 0
            steps.extend((t, list(o)) for t, o in ran)
        marks.append((len(steps), checkpoint(engine)))
    return steps, marks


def checkpoint(engine: Engine) -> Any:
    """The state compared after the same steps: pool, requests, counters, and what the next plan will tell
    the executor (requests removed, block tables truncated by a rollback)."""
    s = engine.scheduler
    stats = s.stats()
    told = list(s._removed), dict(s._truncated)
    return s.steps.next_step_id, pool_key(s), request_key(s), stats, engine.executor.stats, told  # type: ignore[attr-defined]


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=arrivals,
    spec_tokens=st.sampled_from([0, 3]),
    in_flight=st.sampled_from([1, 2]),
    blocks=st.integers(20, 40),
    budget=st.sampled_from([8, 16, 64]),
    caching=st.booleans(),
    seed=st.integers(0, 2**16),
    prefix_aware=st.booleans(),
    retention_s=st.sampled_from([None, None, 0.05, 0.3]),
)
def test_runs_match_single_steps(
    items: list[tuple[float, int, int, int, int]],
    spec_tokens: int,
    in_flight: int,
    blocks: int,
    budget: int,
    caching: bool,
    seed: int,
    prefix_aware: bool,
    retention_s: float | None,
) -> None:
    """Also under PrefixAware, whose queue the cache re-keys (a run that moves no key may run past a waiting
    head), and under session retention, whose protection lapses with the clock (a run stops before it may)."""
    specs = traffic(items)
    single = build(spec_tokens, in_flight, blocks, budget, caching, seed, prefix_aware, retention_s)
    multi = build(spec_tokens, in_flight, blocks, budget, caching, seed, prefix_aware, retention_s)
    steps_single, marks_single = drive(single, specs, runs=False)
    steps_multi, marks_multi = drive(multi, specs, runs=True)
    assert steps_multi == steps_single
    after = dict(marks_single)  # state after each number of steps applied
    for applied, mark in marks_multi:
        assert mark == after[applied]
    assert marks_multi[-1] == marks_single[-1]


def _a_run() -> tuple[Engine, DecodeRun]:
    engine = build(3, 2, 30, 64, True, 1)
    engine.executor.tokens._lengths["a"] = 50  # type: ignore[attr-defined]
    engine.scheduler.submit(
        RequestSpec(request_id="a", prompt_token_ids=[5, 6, 7, 8, 9], max_tokens=50, eos_token_id=0)
    )
    for _ in range(3):
        engine.step()
    for _ in range(10):
        run = engine.scheduler.plan_run(8)
        if run is not None:
            return engine, run
        engine.step()
    raise AssertionError("no run offered")


def test_a_malformed_run_result_changes_nothing() -> None:
    engine, run = _a_run()
    before = checkpoint(engine)
    bad = RunResult(run.first_step_id, [[[1, 2, 3, 4, 5, 6]]], [None], [None])
    with pytest.raises(InvalidRequest, match="sampled 6 tokens"):
        engine.scheduler.complete_run(bad)
    with pytest.raises(InvalidRequest, match="starts at step"):
        engine.scheduler.complete_run(RunResult(run.first_step_id + 1, [[[1]]], [None], [None]))
    assert checkpoint(engine) == before
    # the run is still out: a good result applies it
    result = engine.executor.launch_run(run, float("inf"))  # type: ignore[attr-defined]
    outputs = engine.scheduler.complete_run(result)
    assert len(outputs) == len(result.sampled_token_ids) >= 1


def test_a_run_out_blocks_planning_and_abort() -> None:
    engine, _ = _a_run()
    assert engine.scheduler.plan() is None
    with pytest.raises(InvalidRequest, match="decode run is out"):
        engine.scheduler.abort("a")
    with pytest.raises(InvalidRequest, match="max_steps"):
        engine.scheduler.plan_run(0)


def test_cursor_stops_before_a_step_that_needs_a_block() -> None:
    run = DecodeRun(
        first_step_id=0,
        max_steps=10,
        block_size=8,
        num_speculative_tokens=3,
        request_ids=["a"],
        removed_request_ids=(),
        truncated_block_tables={},
        num_computed_tokens=[1],
        last_token_ids=[9],
        draft_token_ids=[[1, 2, 3]],
        block_tables=[(0,)],
        block_end=[8],
        room=[20],
        length_limit=[100],
        stop_token_ids=[frozenset({0})],
    )
    cursor = RunCursor(run)
    assert cursor.plan(0) == [[1, 2, 3]]  # positions 1..4 fit in block 0
    assert cursor.take(0, [[1, 9]], [[4, 5, 6]])  # one draft accepted: 3 computed, 4 known
    assert cursor.plan(1) == [[4, 5, 6]]  # positions 3..6 still fit
    assert not cursor.take(1, [[4, 5, 6, 7]], [[1, 2, 3]])  # 7 computed: block 0's last token is known
    assert cursor.plan(2) is None


def test_cursor_ends_the_run_at_a_stop_token_and_caps_drafts_by_room() -> None:
    run = DecodeRun(0, 10, 4, 3, ["a"], (), {}, [5], [9], [[1, 2, 3]], [(0, 1, 2)], [12], [3], [100], [frozenset({0})])
    cursor = RunCursor(run)
    assert cursor.plan(0) == [[1, 2]]  # room 3: at most 2 drafts besides the bonus token
    assert not cursor.take(0, [[0]], None)  # EOS
    assert cursor.plan(1) is None


def test_cursor_alternates_two_groups() -> None:
    run = DecodeRun(
        7,
        10,
        16,
        0,
        ["a", "b"],
        (),
        {},
        [17, 20],
        [1, 2],
        [[], []],
        [(0, 1), (2, 3)],
        [32, 32],
        [9, 9],
        [99, 99],
        [frozenset(), frozenset()],
        groups=[[1], [0]],
        launched=1,
    )
    cursor = RunCursor(run)
    assert run.depth == 2
    assert cursor.plan(0) == [[]] and cursor.plan(1) == [[]]
    assert cursor.take(0, [[5]], None)
    assert cursor.pos == [17, 21]
    with pytest.raises(InvalidRequest, match="step 8: 2 rows"):
        cursor.take(1, [[5], [6]], None, check=True)


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=SESSION_TRAFFIC,
    spec_tokens=st.sampled_from([0, 3]),
    in_flight=st.sampled_from([1, 2]),
    blocks=st.integers(12, 24),
    seed=st.integers(0, 2**16),
    prefix_aware=st.booleans(),
    retention_s=st.sampled_from([0.02, 0.1, 0.5]),
    budget=st.sampled_from([64, 256]),
)
def test_runs_match_single_steps_under_retention_with_requests_waiting(
    items: list[tuple[float, int, int, int, int]],
    spec_tokens: int,
    in_flight: int,
    blocks: int,
    seed: int,
    prefix_aware: bool,
    retention_s: float,
    budget: int,
) -> None:
    """A small pool, sessions and retention: runs go on while requests wait behind retained sessions' caches,
    and stop before a protection lapses or a waiting request outlives the window (then admission may open).
    A budget of 256 tokens makes the free blocks run short often (single steps then serve the running set by
    victim key: a run may go on there only while that is its own order and no row can run out of blocks)."""
    specs = traffic(items)
    single = build(spec_tokens, in_flight, blocks, budget, True, seed, prefix_aware, retention_s)
    multi = build(spec_tokens, in_flight, blocks, budget, True, seed, prefix_aware, retention_s)
    steps_single, marks_single = drive(single, specs, runs=False)
    steps_multi, marks_multi = drive(multi, specs, runs=True)
    assert steps_multi == steps_single
    after = dict(marks_single)
    for applied, mark in marks_multi:
        assert mark == after[applied]


def test_runs_go_on_across_rollbacks_and_match_single_steps() -> None:
    """Speculative decoding rolls back a block whenever a row took one for drafts that were rejected: a run
    applies that step itself (the block back to the free list, the row's table and the next plan's allocation
    as single steps leave them) and goes on, ending only at a finish or its bound."""
    items = [(0.0, 20, 200, 0, 0), (0.0, 12, 180, 0, 0), (0.1, 28, 150, 0, 0)]
    specs = traffic(items)
    for in_flight in (1, 2):
        single = build(3, in_flight, 60, 64, True, 5)
        multi = build(3, in_flight, 60, 64, True, 5)
        steps_single, marks_single = drive(single, specs, runs=False)
        rollbacks: list[int] = []
        steps_multi, marks_multi = drive(multi, specs, runs=True, rollbacks_seen=rollbacks)
        assert sum(rollbacks) > 0, "the traffic should roll back blocks inside runs"
        assert steps_multi == steps_single
        after = dict(marks_single)
        for applied, mark in marks_multi:
            assert mark == after[applied]


def test_runs_go_on_near_a_full_pool_and_match_single_steps() -> None:
    """Long answers fill a small pool: single steps then serve the running set by victim key, which under FCFS
    is its admission order until a preempted request comes back. A run goes on there while each step's rows
    find the blocks they could take (no row preempts or waits) and the victim keys keep the run's order."""
    items = [(0.0, 20, 200, 0, 0), (0.0, 12, 180, 0, 0), (0.1, 28, 150, 0, 0), (0.2, 16, 120, 0, 0)]
    specs = traffic(items)
    for spec_tokens, in_flight in ((0, 1), (3, 1), (3, 2)):
        single = build(spec_tokens, in_flight, 30, 256, True, 5)
        multi = build(spec_tokens, in_flight, 30, 256, True, 5)
        steps_single, marks_single = drive(single, specs, runs=False)
        short: list[int] = []
        steps_multi, marks_multi = drive(multi, specs, runs=True, short_runs=short)
        assert len(short) >= 4, f"runs should take the steps near a full pool, took {short}"
        assert multi.scheduler._preemptions == 2, "the pool should run out, and a preempted request come back"
        assert steps_multi == steps_single
        after = dict(marks_single)
        for applied, mark in marks_multi:
            assert mark == after[applied]


def test_cursor_gives_back_a_rolled_back_block_and_plans_it_again() -> None:
    """A row that took a block for drafts and had them rejected holds the block no more (as the scheduler's
    rollback releases it): the run goes on, the step is applied by the per-request code, and the next step's
    plan takes a block again (the one just freed, from the end of the free list, as a single step would)."""
    run = DecodeRun(
        0, 10, 4, 3, ["a"], (), {}, [3], [9], [[1, 2, 3]], [(0,)], [4], [20], [100], [frozenset({0})],
        cross_blocks=True,
        spare_blocks=5,
    )  # fmt: skip
    cursor = RunCursor(run)
    assert cursor.plan(0) == [[1, 2, 3]]  # positions 3..6: one more block
    assert cursor.ends == [8] and cursor.allocated == 1 and cursor.allocs == {0: [(0, 1)]}
    assert cursor.take(0, [[7]], [[4, 5, 6]])  # every draft rejected: 4 computed, the new block held nothing
    assert cursor.ends == [4] and cursor.allocated == 0 and cursor.touched == [0] and not cursor.special
    assert cursor.plan(1) == [[4, 5, 6]]
    assert cursor.ends == [8] and cursor.allocated == 1 and cursor.allocs[1] == [(0, 1)]


def test_a_run_result_with_a_bad_step_after_a_rollback_changes_nothing() -> None:
    """The run's result is checked whole before the rollback inside it is applied: a bad token in a later step
    is refused and leaves the pool (the rolled-back block still held), the requests and the clock as they were."""
    engine = build(3, 1, 60, 64, True, 5)
    scheduler, executor = engine.scheduler, engine.executor
    assert isinstance(executor, SimExecutor)
    for _at, spec, answer in traffic([(0.0, 20, 200, 0, 0), (0.0, 12, 180, 0, 0)]):
        executor.tokens._lengths[spec.request_id] = answer  # type: ignore[index]
        scheduler.submit(spec)
    for _ in range(200):
        run = scheduler.plan_run(64, cross_blocks=True)
        if run is None:
            engine.step()
            continue
        result = executor.launch_run(run, float("inf"))
        cursor = RunCursor(run)
        cursor.plan(0)
        rolled = -1
        for j, sampled in enumerate(result.sampled_token_ids[:-1]):
            ends = list(cursor.ends)
            cursor.take(j, sampled, result.draft_token_ids[j])
            if rolled < 0 and any(a < b for a, b in zip(cursor.ends, ends, strict=True)):
                rolled = j
            cursor.plan(j + 1)
        if rolled >= 0:
            break
        scheduler.complete_run(result)
    else:
        raise AssertionError("no run rolled back a block before its last step")
    before = checkpoint(engine)
    last = [[list(row) for row in step] for step in result.sampled_token_ids]
    last[-1][0][-1] = -1
    bad = RunResult(result.first_step_id, last, result.draft_token_ids, result.elapsed, result.end_times)
    with pytest.raises(InvalidRequest, match=f"step {result.first_step_id + len(last) - 1}: request"):
        scheduler.complete_run(bad)
    assert checkpoint(engine) == before
    assert len(scheduler.complete_run(result)) == len(result.sampled_token_ids)
    scheduler.check_invariants()


def test_a_runs_block_tables_are_read_while_it_is_out() -> None:
    engine, run = _a_run()
    request = engine.scheduler.running["a"]
    assert isinstance(request.state, Decoding)
    assert run.block_tables == [tuple(request.state.blocks)]
    result = engine.executor.launch_run(run, float("inf"))  # type: ignore[attr-defined]
    engine.scheduler.complete_run(result)
    with pytest.raises(InvalidRequest, match="block_tables read after complete_run"):
        _ = run.block_tables


@contextlib.contextmanager
def protection_checked(seen: list[int]) -> Any:
    """While open, every ``protected_from`` answer is checked against ``protected_blocks`` (the walk per request)."""
    from tokensched.retention import SessionRetention

    fast = SessionRetention.protected_from

    def checked(self: SessionRetention, tails: dict[str, int] | None, request: Any, now: float) -> int:
        got = fast(self, tails, request, now)
        assert got == self.protected_blocks(request, now), "tails summed once must give each request's protection"
        seen.append(got)
        return got

    SessionRetention.protected_from = checked  # type: ignore[method-assign]
    try:
        yield
    finally:
        SessionRetention.protected_from = fast  # type: ignore[method-assign]


RETENTION_TRAFFIC = [(0.0, 30, 60, 1, 0), (0.0, 36, 80, 2, 0), (0.05, 20, 40, 0, 0), (0.1, 24, 70, 1, 0)]


@settings(
    max_examples=max(1, EXAMPLES // 10),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=SESSION_TRAFFIC,
    blocks=st.integers(12, 24),
    seed=st.integers(0, 2**16),
    prefix_aware=st.booleans(),
    retention_s=st.sampled_from([0.02, 0.1, 0.5]),
)
def test_retained_tails_summed_once_give_each_requests_protection(
    items: list[tuple[float, int, int, int, int]], blocks: int, seed: int, prefix_aware: bool, retention_s: float
) -> None:
    """Whether admission stays shut looks at several queued requests with the pool standing still, so it walks
    each retained session's chain once (``tails``) and sums them per request; every answer equals the
    per-request walk of ``protected_blocks``."""
    seen: list[int] = []
    with protection_checked(seen):
        drive(build(3, 1, blocks, 64, True, seed, prefix_aware, retention_s), traffic(items), runs=True)
    if currently_in_test_context():
        hypothesis_event(f"protection answers: {min(len(seen), 10)}{'+' if len(seen) >= 10 else ''}")


def test_retained_tails_are_asked_on_fixed_traffic() -> None:
    """The traffic above does reach the check: requests wait behind other sessions' retained caches."""
    seen: list[int] = []
    with protection_checked(seen):
        drive(build(3, 1, 14, 64, True, 7, False, 0.5), traffic(RETENTION_TRAFFIC), runs=True)
    assert any(seen), "some request should have been held back by another session's retained cache"
