"""The fused walk of a decode run (``run_loop.walk``) against the step-by-step ``SimRun`` walk it replaces.

Two engines get the same random traffic (arrivals on the virtual clock,
sessions with shared prefixes, small pools, drafts with acceptance and
rollback or plain decoding, one or two steps in flight, runs cut short by a
random horizon, by ``max_steps`` or by the free blocks, crossing blocks or
not). One runs its decode runs through ``SimExecutor.launch_run`` (the fused
walk); the other's ``launch_run`` collects and launches the same run's steps
one call at a time (``SimRun.collect`` / ``launch_next``). After every call
the results, the cursors, the clocks, the steps in flight, the statistics,
the token targets and the RNG's state must be equal.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import attrs
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched import RequestSpec
from tokensched.decode_run import DecodeRun, RunResult
from tokensched.engine import Engine
from tokensched.errors import CapacityError, InvalidRequest
from tokensched_sim import Deployment, SimExecutor
from tokensched_sim.cost import CostModel
from tokensched_sim.decode_cost import DecodeCost
from tokensched_sim.executor import SimRun
from tokensched_sim.run_loop import _stepwise

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))

arrivals = st.lists(
    st.tuples(
        st.floats(0.0, 0.3),  # arrival time, s (close: several requests decode together)
        st.integers(1, 40),  # prompt tokens
        st.integers(1, 70),  # answer length (EOS forced there)
        st.integers(0, 2),  # session: 0 none, else continues session 1 or 2 (shared prefix)
        st.integers(0, 20),  # max_tokens beyond the answer (0: a length finish at the answer)
    ),
    min_size=1,
    max_size=6,
)


class PricedSteps(DecodeCost):
    """The run's cost model, noting what each step was priced from (the sums as well as the price)."""

    def __init__(self, model: CostModel) -> None:
        super().__init__(model)
        self.calls: list[tuple[Any, ...]] = []

    def step_time(self, num_requests: int, num_tokens: int, pairs: int, kv_tokens: int) -> float:
        self.calls.append(("step", num_requests, num_tokens, pairs, kv_tokens))
        return super().step_time(num_requests, num_tokens, pairs, kv_tokens)

    def draft_time(self, num_requests: int, kv_tokens: int, num_drafts: int) -> float:
        self.calls.append(("draft", num_requests, kv_tokens, num_drafts))
        return super().draft_time(num_requests, kv_tokens, num_drafts)


def build(
    spec_tokens: int, in_flight: int, block_size: int, blocks: int, caching: bool, seed: int, mla: bool = False
) -> Engine:
    """An engine over a small pool; ``mla``: the Kimi-class MLA deployment (its decode attention is compute-bound
    at long contexts, so a step's query-key pairs move its price), else a dense 8B one (bound by KV reads)."""
    executor = SimExecutor(
        Deployment() if mla else Deployment(model="dense-8b", gpu="h100", tp=1),
        block_size=block_size,
        num_kv_blocks=blocks,
        num_speculative_tokens=spec_tokens,
        output_lengths={},
        seed=seed,
    )
    executor._decode_cost = PricedSteps(executor.cost_model)
    return Engine.create(
        executor,
        max_batched_tokens=64,
        num_speculative_tokens=spec_tokens,
        max_steps_in_flight=in_flight,
        enable_prefix_caching=caching,
        max_model_len=300,
    )


def step_by_step(executor: SimExecutor, walks: list[SimRun]) -> None:
    """Make ``executor.launch_run`` walk its runs a call a step (the reference); its ``SimRun`` go to ``walks``."""

    def launch_run(run: DecodeRun, until: float) -> RunResult:
        steps = executor.begin_run(run)
        walks.append(steps)
        steps.start()
        _stepwise(executor, steps, min(until, run.admission_shut_until))
        return steps.result()

    executor.launch_run = launch_run  # type: ignore[method-assign]


def keep_walks(executor: SimExecutor, walks: list[SimRun]) -> None:
    """Keep each ``SimRun`` the executor begins (to compare its cursor)."""
    begin = executor.begin_run

    def begin_run(run: DecodeRun) -> SimRun:
        steps = begin(run)
        walks.append(steps)
        return steps

    executor.begin_run = begin_run  # type: ignore[method-assign]


def executor_key(executor: SimExecutor) -> Any:
    tokens = executor.tokens
    in_flight = [(f.end, f.result) for f in executor._in_flight]
    return (
        executor.now(),
        executor._busy_until,
        in_flight,
        attrs.astuple(executor.stats),
        tokens._rng.getstate(),
        dict(tokens._left),
        executor._decode_cost.calls,  # type: ignore[attr-defined]
    )


def cursor_key(steps: SimRun) -> Any:
    c = steps.cursor
    return (c.pos, c.ends, c.size, c.room, c.drafts, c.planned, c.allocs, c.touched, c.allocated, c.special)


def drive_both(
    items: list[tuple[float, int, int, int, int]],
    spec_tokens: int,
    in_flight: int,
    block_size: int,
    blocks: int,
    caching: bool,
    seed: int,
    horizons: list[float],
    limits: list[tuple[int, bool]],
    early: bool,
    mla: bool = False,
) -> list[str]:
    """Drive a fused and a reference engine through ``items`` comparing them after every call; returns events."""
    fused, reference = (build(spec_tokens, in_flight, block_size, blocks, caching, seed, mla) for _ in range(2))
    fused_walks: list[SimRun] = []
    reference_walks: list[SimRun] = []
    keep_walks(fused.executor, fused_walks)  # type: ignore[arg-type]
    step_by_step(reference.executor, reference_walks)  # type: ignore[arg-type]
    sessions: dict[int, list[int]] = {}
    pending = []
    for n, (at, size, answer, session, extra) in enumerate(sorted(items)):
        prompt = [*sessions.get(session, []), *(5 + (n * 31 + j) % 40 for j in range(size))]
        if session:
            sessions[session] = prompt
        pending.append((at, f"r{n}", prompt[-200:], answer, answer + extra))
    events: list[str] = []
    for call in range(3000):
        now = fused.executor.now()
        assert reference.executor.now() == now
        if early and pending and pending[0][0] <= now:
            for engine in (fused, reference):  # a step in flight when the request arrives: runs of two groups
                engine.launch_ready()
        while pending and pending[0][0] <= now:
            _, rid, prompt, answer, max_tokens = pending.pop(0)
            for engine in (fused, reference):
                engine.executor.tokens._lengths[rid] = answer  # type: ignore[attr-defined]
                spec = RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=max_tokens, eos_token_id=0)
                with contextlib.suppress(InvalidRequest, CapacityError):  # too long for the pool: refused by both
                    engine.scheduler.submit(spec)
        if not fused.scheduler.has_work:
            if not pending:
                break
            for engine in (fused, reference):
                engine.executor.wait_until(pending[0][0])
            continue
        until = min(pending[0][0] if pending else float("inf"), now + horizons[call % len(horizons)])
        max_steps, cross = limits[call % len(limits)]
        ran = fused.step_run(until, max_steps, cross_blocks=cross)
        same = reference.step_run(until, max_steps, cross_blocks=cross)
        assert ran == same
        if ran is None:
            assert fused.step() == reference.step()
        else:
            events.append(f"run of {min(len(ran), 5)}+ steps")
            walk = fused_walks[-1]
            if walk.run.depth > 1:
                events.append("a run of two groups")
            if walk.cursor.touched:
                events.append("a run went on across a block filled, hashed or rolled back")
            if walk.cursor.allocs:
                events.append("a run planned new blocks")
            assert cursor_key(walk) == cursor_key(reference_walks[-1])
        assert executor_key(fused.executor) == executor_key(reference.executor)  # type: ignore[arg-type]
    return events


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=arrivals,
    spec_tokens=st.sampled_from([0, 1, 3, 3]),
    in_flight=st.sampled_from([1, 2, 2]),
    block_size=st.sampled_from([4, 8, 16]),
    blocks=st.integers(24, 60),
    caching=st.booleans(),
    seed=st.integers(0, 2**16),
    horizons=st.lists(st.sampled_from([float("inf"), 0.002, 0.01, 0.05, 0.3]), min_size=1, max_size=6),
    limits=st.lists(st.tuples(st.sampled_from([256, 256, 1, 3, 9]), st.booleans()), min_size=1, max_size=6),
    early=st.booleans(),
    mla=st.booleans(),
)
def test_the_fused_walk_equals_the_step_by_step_walk(
    items: list[tuple[float, int, int, int, int]],
    spec_tokens: int,
    in_flight: int,
    block_size: int,
    blocks: int,
    caching: bool,
    seed: int,
    horizons: list[float],
    limits: list[tuple[int, bool]],
    early: bool,
    mla: bool,
) -> None:
    events = drive_both(items, spec_tokens, in_flight, block_size, blocks, caching, seed, horizons, limits, early, mla)
    for text in sorted(set(events)):
        event(text)
    event(f"{min(sum(e.startswith('run of') for e in events), 4)}+ runs")


def test_the_fused_walk_equals_the_step_by_step_walk_with_two_groups() -> None:
    """Fixed traffic whose runs alternate two groups (a request arrived while a step was in flight)."""
    items = [(0.171, 5, 36, 0, 0), (0.149, 29, 50, 2, 0), (0.114, 14, 26, 1, 0), (0.009, 25, 47, 2, 0)]
    events = drive_both(items, 3, 2, 8, 60, True, 780, [float("inf")], [(256, True)], True)
    assert events.count("a run of two groups") == 2
    assert "a run went on across a block filled, hashed or rolled back" in events
