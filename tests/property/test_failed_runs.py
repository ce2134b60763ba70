"""A decode run the executor fails: the same outcome as single steps failing, and nothing leaks.

``Scheduler.fail_run`` promises that a failed run fails exactly the steps a
single-step engine would hold at that moment (the one in flight before the
run, if any, and those the run planned at its start), oldest first, with
``fail``'s rule for each request (rolled back for a retry, or finished with
an error). Two schedulers get the same random traffic (shared prefixes,
drafts, small pools, one or two steps in flight, chunk runs); where a run is
offered, one takes it and fails it, the other plans those steps singly and
fails each. Outputs, pools, requests, counters and the steps in flight must
be equal after every operation, and the scheduler's invariants hold.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, currently_in_test_context, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from tests.twins import call, complete_oldest, plan_key, pool_key, request_key
from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepFailurePolicy
from tokensched.engine import Engine
from tokensched.errors import ExecutorError, InvalidRequest
from tokensched.invariants import check_scheduler
from tokensched.plan import RequestEvent, StepPlan
from tokensched_sim import Deployment, SimExecutor

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4
VOCAB = 6

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 14), st.integers(1, 12), st.integers(0, 3)),
        *[st.tuples(st.just("step"), st.integers(0, 2**31 - 1))] * 5,
        *[st.tuples(st.just("fail_run"), st.booleans(), st.booleans())] * 2,
    ),
    min_size=20,
    max_size=70,
)


def event(text: str) -> None:
    if currently_in_test_context():
        hypothesis_event(text)


def outputs_key(outputs: Any) -> Any:
    if outputs[0] != "ok":
        return outputs
    return [(o.request_id, list(o.new_token_ids), o.finish_reason, o.num_output_tokens, o.event) for o in outputs[1]]


def state_key(s: Scheduler) -> Any:
    return pool_key(s), request_key(s), s.stats(), s.steps.next_step_id, [st.step_id for st in s.steps]


@settings(
    max_examples=max(1, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=ops,
    num_blocks=st.sampled_from([12, 24, 40, 64, 64]),
    shape=st.sampled_from([(1, 0), (1, 2), (2, 2), (2, 2)]),  # (steps in flight, drafts): two groups need both
    caching=st.booleans(),
    budget=st.sampled_from([4, 8, 16, 16]),
    retries=st.sampled_from([None, 0, 1, 3]),  # None: finish on failure
)
def test_a_failed_run_fails_what_single_steps_would_hold(
    ops: list[tuple[Any, ...]],
    num_blocks: int,
    shape: tuple[int, int],
    caching: bool,
    budget: int,
    retries: int | None,
) -> None:
    in_flight, k_spec = shape
    config = SchedulerConfig(
        num_blocks=num_blocks,
        block_size=BS,
        max_batched_tokens=budget,
        max_steps_in_flight=in_flight,
        max_model_len=40,
        num_speculative_tokens=k_spec,
        enable_prefix_caching=caching,
        on_step_failure=StepFailurePolicy.ERROR if retries is None else StepFailurePolicy.RETRY,
        max_step_retries=retries or 0,
    )
    clock = [0.0]
    runs, singles = (Scheduler(config, clock=lambda: clock[0]) for _ in range(2))
    plans: dict[int, list[StepPlan]] = {id(runs): [], id(singles): []}
    seq = failed = 0
    for op in ops:
        clock[0] += 0.5
        kind = op[0]
        if kind == "submit":
            _, length, max_tokens, prefix = op
            prompt = [(seq * 3 + i) % VOCAB if i >= 6 else (prefix + i) % VOCAB for i in range(length)]
            spec = RequestSpec(request_id=f"r{seq}", prompt_token_ids=prompt, max_tokens=max_tokens, eos_token_id=0)
            seq += 1
            assert call(runs.submit, spec) == call(singles.submit, spec)
        elif kind == "step":
            got = []
            for s in (runs, singles):
                mine = plans[id(s)]
                plan = s.plan()
                if plan is not None:
                    mine.append(plan)
                done = mine and (plan is None or s.steps.full)
                outputs = complete_oldest(s, mine, op[1], vocab=VOCAB, max_drafts=k_spec) if done else None
                got.append((plan_key(plan), outputs))
            assert got[0] == got[1]
        else:
            _, cross, chunks = op
            run = runs.plan_run(16, cross_blocks=cross, chunks=cross and chunks)
            if run is not None:
                error = ExecutorError(run.first_step_id, "injected run failure")
                for s in range(run.launched, run.depth):  # what the single-step engine holds in flight now
                    plan = singles.plan()
                    assert plan is not None and plan.step_id == run.first_step_id + s
                    members = [run.request_ids[i] for i in run.group(s)]
                    assert list(plan.request_ids)[: len(members)] == members
                single_out: list[Any] = []
                for s in range(run.depth):
                    single_out += singles.fail(run.first_step_id + s, error)
                failed += 1
                event(f"a failed run: depth {run.depth}, launched {run.launched}, chunk {bool(run.chunk_tokens)}")
                assert outputs_key(call(runs.fail_run, error)) == outputs_key(("ok", single_out))
                assert not runs.steps and not singles.steps
                plans[id(runs)].clear()
                plans[id(singles)].clear()
                events = {o.event for o in single_out} | {o.finish_reason for o in single_out}
                event(f"a failed run's outputs: {sorted(map(str, events - {None}))}")
        assert state_key(runs) == state_key(singles)
        check_scheduler(runs)
    event(f"runs failed: {min(failed, 3)}{'+' if failed >= 3 else ''}")


def test_fail_run_without_a_run_out_is_refused_and_changes_nothing() -> None:
    s = Scheduler(SchedulerConfig(num_blocks=8, block_size=BS, max_batched_tokens=8), clock=lambda: 0.0)
    s.submit(RequestSpec(request_id="a", prompt_token_ids=[1, 2, 3], max_tokens=4))
    before = state_key(s)
    with pytest.raises(InvalidRequest, match="no decode run is out"):
        s.fail_run(ExecutorError(0, "x"))
    assert state_key(s) == before


class FailingRuns(SimExecutor):
    """The simulator, whose ``launch_run`` fails its first run (losing the steps in flight with it, as the
    RunExecutor contract says)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failed: list[list[str]] = []  # the request ids of the run failed

    def launch_run(self, run: Any, until: float) -> Any:
        if not self.failed:
            self.failed.append(list(run.request_ids))
            self._in_flight.clear()
            raise ExecutorError(run.first_step_id, "device lost")
        return super().launch_run(run, until)


@pytest.mark.parametrize(("policy", "outcome"), [("retry", RequestEvent.ROLLED_BACK), ("error", "error")])
def test_an_engine_whose_run_fails_goes_on_and_leaks_no_block(policy: str, outcome: object) -> None:
    executor = FailingRuns(
        deployment=Deployment(model="dense-8b", gpu="h100", tp=1),
        block_size=BS,
        num_kv_blocks=64,
        output_lengths={"a": 40, "b": 40},
        seed=3,
    )
    engine = Engine.create(executor, max_batched_tokens=32, max_steps_in_flight=1, on_step_failure=policy)
    s = engine.scheduler
    seen: list[Any] = []
    failed_run: list[Any] | None = None
    for n in range(500):
        if n in (0, 2):  # b after a few of a's steps
            rid = "a" if n == 0 else "b"
            s.submit(RequestSpec(request_id=rid, prompt_token_ids=list(range(1, 10)), max_tokens=40, eos_token_id=0))
        if not s.has_work:
            break
        stepped = engine.step_run(float("inf"), max_steps=3)
        if stepped is None:
            seen += engine.step()
            continue
        outputs = [o for _, got in stepped for o in got]
        if failed_run is None:
            failed_run = outputs
            assert len(stepped) == 1 and engine.num_in_flight == 0 and not s.steps
        seen += outputs
        check_scheduler(s)
    assert not s.has_work and failed_run is not None
    [ids] = executor.failed
    assert sorted(o.request_id for o in failed_run) == sorted(ids)
    assert {o.event if policy == "retry" else o.finish_reason for o in failed_run} == {outcome}
    finished = {o.request_id: o.finish_reason for o in seen if o.finish_reason is not None}
    lost = set(ids) if policy == "error" else set()  # finished by the failure; the rest run to their EOS
    assert finished == {rid: "error" if rid in lost else "stop" for rid in ("a", "b")}
    assert len(finished) == 2 and s.pool.num_free == 64 and s.stats().num_failed_steps == 1
