"""``SimExecutor.begin_run``: a decode run stepped by its caller is the run ``launch_run`` runs in one call."""

from __future__ import annotations

import copy
import math

import pytest

from tokensched import RequestSpec
from tokensched.engine import Engine
from tokensched_sim import Deployment, SimExecutor


def _engine(spec_tokens: int, in_flight: int) -> Engine:
    executor = SimExecutor(
        Deployment(model="dense-8b", gpu="h100", tp=1),
        block_size=4,
        num_kv_blocks=200,
        num_speculative_tokens=spec_tokens,
        output_lengths={"a": 60, "b": 45, "c": 70},
        seed=5,
    )
    engine = Engine.create(
        executor, max_batched_tokens=64, num_speculative_tokens=spec_tokens, max_steps_in_flight=in_flight
    )
    for rid, n in (("a", 9), ("b", 14), ("c", 5)):
        engine.scheduler.submit(
            RequestSpec(request_id=rid, prompt_token_ids=[3 + i % 7 for i in range(n)], max_tokens=80)
        )
    return engine


@pytest.mark.parametrize(("spec_tokens", "in_flight"), [(0, 1), (3, 1)])
def test_a_run_stepped_by_its_caller_equals_launch_run(spec_tokens: int, in_flight: int) -> None:
    """Same steps, tokens, drafts, times and clock. (Two groups: ``launch_run`` walks the same ``SimRun``, and
    ``tests/property/test_fast_path.py`` checks it against single steps.)"""
    engines = [_engine(spec_tokens, in_flight) for _ in range(2)]
    for _ in range(40):
        runs = [e.scheduler.plan_run(16, cross_blocks=True) for e in engines]
        if runs[0] is not None:
            break
        for e in engines:
            e.step()
    one, stepped = engines
    run, same = runs
    assert run is not None and same is not None
    assert run.depth == 1
    whole = one.executor.launch_run(run, float("inf"))  # type: ignore[attr-defined]
    steps = stepped.executor.begin_run(same)  # type: ignore[attr-defined]
    steps.start()
    while steps.collect() and steps.launch_next():
        pass
    assert steps.result() == whole
    assert stepped.executor.now() == one.executor.now()
    assert stepped.executor.num_steps_in_flight == one.executor.num_steps_in_flight == run.depth - 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(("spec_tokens", "in_flight"), [(0, 1), (3, 1), (3, 2)])
@pytest.mark.parametrize(
    "stop", [("at the end of step", 0), ("at the end of step", 3), ("steps", 1.5), ("steps", 5.5), ("steps", 1e3)]
)
def test_launch_run_stops_where_the_stepped_loop_stops(
    spec_tokens: int, in_flight: int, stop: tuple[str, float]
) -> None:
    """``SimRun.drive`` (what ``launch_run`` runs) against ``collect``/``launch_next`` with the clock checked between
    them, over every run of a workload (one group, and two with two steps in flight): the same results, clocks,
    steps in flight, counters and outputs, with ``until`` a few steps into a run, past its end, or exactly at a
    step's end (a copy of the engine runs the run first to find it: no step may start there)."""
    engines = [_engine(spec_tokens, in_flight) for _ in range(2)]
    one, stepped = engines
    ex1, ex2 = one.executor, stepped.executor
    depths: list[int] = []
    for n in range(600):
        if n == 2:  # a latecomer while a step is in flight: with two in flight, its decodes alternate with the
            for e in engines:  # others' (two groups)
                e.launch_ready()
                e.scheduler.submit(RequestSpec(request_id="d", prompt_token_ids=[4, 5, 6], max_tokens=60))
        probe = copy.deepcopy(one)
        plans = [e.scheduler.plan_run(16, cross_blocks=True) if e.num_in_flight <= 1 else None for e in engines]
        run, same = plans
        assert (run is None) == (same is None)
        if run is None or same is None:
            if not one.scheduler.has_work:
                break
            assert one.step() == stepped.step()
            continue
        depths.append(run.depth)
        kind, amount = stop
        if kind == "steps":
            until = ex1.now() + amount * ex1.stats.busy_s / ex1.stats.num_steps  # type: ignore[attr-defined]
        else:
            ahead = probe.scheduler.plan_run(16, cross_blocks=True)
            assert ahead is not None
            ends = probe.executor.launch_run(ahead, math.inf).end_times  # type: ignore[attr-defined]
            until = ends[min(int(amount), len(ends) - 1)]
        whole = ex1.launch_run(run, until)  # type: ignore[attr-defined]
        steps = ex2.begin_run(same)  # type: ignore[attr-defined]
        steps.start()
        while steps.collect() and ex2.now() < min(until, same.admission_shut_until) and steps.launch_next():
            pass
        part = steps.result()
        assert part == whole
        assert ex2.now() == ex1.now()
        assert ex2.num_steps_in_flight == ex1.num_steps_in_flight  # type: ignore[attr-defined]
        assert ex2.stats == ex1.stats  # type: ignore[attr-defined]
        assert stepped.scheduler.complete_run(part) == one.scheduler.complete_run(whole)
        done = len(whole.sampled_token_ids)
        for e in engines:
            e._launched.clear()
            e._launched.extend(range(run.first_step_id + done, run.first_step_id + done + run.depth - 1))
    assert not one.scheduler.has_work and not stepped.scheduler.has_work
    assert depths and max(depths) == in_flight
