"""Runs that carry a prefill chunk against single steps: identical outputs, times, pools, requests and KV events.

``plan_run(..., cross_blocks=True, chunks=True)`` may offer a run whose steps
are the running decodes plus a non-final chunk of the one request still
prefilling (what a DP-attention rank's steps mostly are). Two schedulers on
the simulator get the same traffic (prompts long against a small budget, so
prompts prefill beside decodes for many steps; small blocks and pools, so
chunks evict cached blocks; sessions whose turns share a prefix; drafts;
a chunk cap below the budget or not; an engine that mixes prefill and decode
in one pass and one that runs them as two). One takes every run the
scheduler offers, the other single steps only. After every step or run the
steps' outputs and end times, the KV events, the pool (states, refcounts,
hashes, eviction order), every request's cursor and tokens, the counters and
the executor's counters must be equal.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, currently_in_test_context, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from tests.twins import pool_key, request_key
from tokensched import RequestSpec
from tokensched.engine import Engine
from tokensched.errors import CapacityError, InvalidRequest
from tokensched.kv_events import KVEventRecorder
from tokensched.machines.request import Prefilling
from tokensched.policies import PrefixAwarePolicy
from tokensched.run_replay import reference_replay
from tokensched_sim import Deployment, SimExecutor

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4

traffic_items = st.lists(
    st.tuples(
        st.floats(0.0, 0.5),  # arrival time, s
        st.integers(1, 120),  # new prompt tokens
        st.integers(1, 60),  # answer length (EOS forced there)
        st.integers(0, 2),  # session: 0 none, else continues session 1 or 2 (shared prefix)
    ),
    min_size=1,
    max_size=8,
)


def event(text: str) -> None:
    """A hypothesis event when a hypothesis test is running (``_drive`` also serves plain tests)."""
    if currently_in_test_context():
        hypothesis_event(text)


def _traffic(items: list[tuple[float, int, int, int]]) -> list[tuple[float, RequestSpec, int]]:
    sessions: dict[int, list[int]] = {}
    out = []
    for n, (at, new, answer, session) in enumerate(sorted(items)):
        fresh = [7 + (n * 31 + j) % 50 for j in range(new)]
        prompt = [*sessions.get(session, []), *fresh] if session else fresh
        if session:
            sessions[session] = prompt
        spec = RequestSpec(
            request_id=f"r{n}", prompt_token_ids=prompt[-300:], max_tokens=answer, eos_token_id=0, arrival_time=at
        )
        out.append((at, spec, answer))
    return out


def _build(
    engine: str,
    spec_tokens: int,
    blocks: int,
    budget: int,
    cap: int | None,
    caching: bool,
    seed: int,
    aware: bool,
    in_flight: int = 1,
) -> tuple[Engine, KVEventRecorder]:
    """``engine`` names the serving engine; with ``"sglang-mla"`` SGLang over the default MLA model (a chunk's
    cached context then costs an up-projection of its own), else a dense model. ``in_flight``: the steps the
    engine keeps in flight (two: the TensorRT-LLM and vLLM profiles' overlap)."""
    if engine == "sglang-mla":
        deployment = Deployment(engine="sglang", tp=8)
    else:
        deployment = Deployment(model="dense-8b", gpu="h100", tp=1, engine=engine)
    executor = SimExecutor(
        deployment,
        block_size=BS,
        num_kv_blocks=blocks,
        num_speculative_tokens=spec_tokens,
        output_lengths={},
        seed=seed,
    )
    built = Engine.create(
        executor,
        PrefixAwarePolicy() if aware else None,
        max_batched_tokens=budget,
        long_prefill_chunk=cap,
        num_speculative_tokens=spec_tokens,
        max_steps_in_flight=in_flight,
        enable_prefix_caching=caching,
        max_model_len=600,
        max_running=4,
    )
    recorder = KVEventRecorder()
    recorder.attach(built.scheduler)
    return built, recorder


def _drive(engine: Engine, recorder: KVEventRecorder, specs: list[tuple[float, RequestSpec, int]], runs: bool) -> Any:
    """Step ``engine`` through ``specs``; returns, per step or run, the steps' (end, outputs) and the state after."""
    scheduler, executor = engine.scheduler, engine.executor
    assert isinstance(executor, SimExecutor)
    lengths: dict[str, int] = executor.tokens._lengths  # type: ignore[assignment]
    pending = list(specs)
    steps: list[Any] = []
    marks: list[Any] = []
    chunk_steps = 0
    offered = _record_runs(engine)
    for _ in range(3000):
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
        offered.clear()
        waiting = len(scheduler.waiting)
        newest = next(reversed(scheduler.running), None)  # the request admitted last
        ran = engine.step_run(until, 64, chunks=True) if runs else None
        if ran is None:
            outputs = list(engine.step())
            steps.append((executor.now(), outputs))
        else:
            steps.extend((t, list(o)) for t, o in ran)
            run, result = offered
            if run.chunk_tokens:
                took = sum(1 for j in range(len(ran)) if j in _chunks_of(run, result))
                chunk_steps += took
                shape = "two groups" if run.depth == 2 else "one group"
                event(f"a run with a prefill chunk ({shape}) of {min(took, 5)}+ chunk steps")
                if run.depth == 2:
                    event(f"two groups, the chunk in the step in flight: {run.chunk_group == 0}")
                    if run.request_ids[-1] != newest:
                        event("two groups, a decode admitted after the prompt")
                if waiting:
                    event(f"a run with a prefill chunk while a request waits ({shape})")
        marks.append((len(steps), _state(engine, recorder)))
    if runs:
        chunked = "none" if not chunk_steps else "1-9" if chunk_steps < 10 else "10+"
        event(f"steps taken from runs with a prefill chunk: {chunked}")
    return steps, marks


def _record_runs(engine: Engine) -> list[Any]:
    """A list that gets what ``engine.step_run`` plans and runs: the run (None if none) and its result."""
    scheduler, executor = engine.scheduler, engine.executor
    assert isinstance(executor, SimExecutor)
    offered: list[Any] = []
    plan_run, launch_run = scheduler.plan_run, executor.launch_run

    def plan_recorded(*args: Any, **kwargs: Any) -> Any:
        run = plan_run(*args, **kwargs)
        offered.append(run)
        return run

    def launch_recorded(run: Any, until: float) -> Any:
        result = launch_run(run, until)
        offered.append(result)
        return result

    scheduler.plan_run = plan_recorded  # type: ignore[method-assign]
    executor.launch_run = launch_recorded  # type: ignore[method-assign]
    return offered


def _chunks_of(run: Any, result: Any) -> dict[int, int]:
    return reference_replay(run, result).chunks


def _state(engine: Engine, recorder: KVEventRecorder) -> Any:
    s = engine.scheduler
    return s.steps.next_step_id, pool_key(s), request_key(s), s.stats(), engine.executor.stats, recorder.take()  # type: ignore[attr-defined]


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    items=traffic_items,
    engine=st.sampled_from(["vllm", "sglang", "sglang-mla"]),
    spec_tokens=st.sampled_from([0, 3]),
    blocks=st.integers(30, 120),
    budget=st.sampled_from([8, 16, 32]),
    cap=st.sampled_from([None, None, 6, 12]),
    caching=st.booleans(),
    seed=st.integers(0, 2**16),
    aware=st.booleans(),
    in_flight=st.sampled_from([1, 2, 2]),
)
def test_runs_with_a_prefill_chunk_match_single_steps(
    items: list[tuple[float, int, int, int]],
    engine: str,
    spec_tokens: int,
    blocks: int,
    budget: int,
    cap: int | None,
    caching: bool,
    seed: int,
    aware: bool,
    in_flight: int,
) -> None:
    _check_twins(_traffic(items), (engine, spec_tokens, blocks, budget, cap, caching, seed, aware, in_flight))


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    decodes=st.lists(st.tuples(st.integers(1, 12), st.integers(10, 80)), min_size=1, max_size=3),
    prompts=st.lists(st.tuples(st.floats(0.0, 0.3), st.integers(40, 200)), min_size=1, max_size=3),
    engine=st.sampled_from(["vllm", "sglang", "sglang-mla"]),
    blocks=st.integers(60, 160),
    budget=st.sampled_from([12, 16, 32]),
    cap=st.sampled_from([None, None, 10]),
    caching=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_two_group_runs_with_a_prefill_chunk_match_single_steps(
    decodes: list[tuple[int, int]],
    prompts: list[tuple[float, int]],
    engine: str,
    blocks: int,
    budget: int,
    cap: int | None,
    caching: bool,
    seed: int,
) -> None:
    """Two steps in flight under speculation: short prompts decode in two alternating groups when long prompts
    arrive, so runs carry a chunk in the steps of one group (the one in flight at the run's start, or the other)."""
    items = [(0.0, new, answer, 0) for new, answer in decodes]
    items += [(at, new, 8, session) for session, (at, new) in enumerate(prompts)]
    _check_twins(_traffic(items), (engine, 3, blocks, budget, cap, caching, seed, False, 2))


def _check_twins(specs: list[tuple[float, RequestSpec, int]], built: tuple[Any, ...]) -> None:
    """One engine takes every run offered, the other single steps only: the same steps, states and events."""
    single = _drive(*_build(*built), specs, runs=False)
    multi = _drive(*_build(*built), specs, runs=True)
    steps_single, marks_single = single
    steps_multi, marks_multi = multi
    assert steps_multi == steps_single
    after = dict(marks_single)
    events_single = [m[-1] for _, m in marks_single]
    events_multi = [m[-1] for _, m in marks_multi]
    assert [e for es in events_multi for e in es] == [e for es in events_single for e in es]
    for applied, mark in marks_multi:
        assert mark[:-1] == after[applied][:-1]


def _a_chunk_run() -> tuple[Engine, Any]:
    """An engine with one decode running and a long prompt prefilling beside it, and the chunk run it offers."""
    engine, _ = _build("sglang", 3, 80, 8, None, True, 1, False)
    lengths = engine.executor.tokens._lengths  # type: ignore[attr-defined]
    lengths["a"], lengths["b"] = 40, 5
    scheduler = engine.scheduler
    scheduler.submit(RequestSpec(request_id="a", prompt_token_ids=[5, 6, 7], max_tokens=40, eos_token_id=0))
    engine.step()
    scheduler.submit(RequestSpec(request_id="b", prompt_token_ids=list(range(8, 108)), max_tokens=5, eos_token_id=0))
    for _ in range(5):
        run = scheduler.plan_run(64, cross_blocks=True, chunks=True)
        if run is not None and run.chunk_tokens:
            return engine, run
        if run is not None:
            raise AssertionError("a decode run where a chunk run was expected")
        engine.step()
    raise AssertionError("no chunk run offered")


def test_a_chunk_run_moves_the_prompt_by_its_chunks_and_leaves_the_last_chunk() -> None:
    engine, run = _a_chunk_run()
    executor = engine.executor
    assert isinstance(executor, SimExecutor)
    b = engine.scheduler.running["b"]
    start = b.state.num_computed  # type: ignore[union-attr]
    result = executor.launch_run(run, float("inf"))
    chunks = reference_replay(run, result).chunks
    assert len(result.sampled_token_ids) >= 2
    assert sorted(chunks) == list(range(len(result.sampled_token_ids)))  # every step carries a chunk
    assert all(n == 8 - 1 - len(d) for n, d in zip(chunks.values(), run_drafts(run, result), strict=True))
    engine.scheduler.complete_run(result)
    assert type(b.state) is Prefilling
    assert b.state.num_computed == start + sum(chunks.values()) < b.tokens.size


def run_drafts(run: Any, result: Any) -> list[int]:
    """Per step, the drafts its one decode row verified."""
    planned = reference_replay(run, result).planned
    return [planned[j][0] for j in range(len(result.sampled_token_ids))]


def test_a_malformed_chunk_run_result_changes_nothing() -> None:
    engine, run = _a_chunk_run()
    executor = engine.executor
    assert isinstance(executor, SimExecutor)
    result = executor.launch_run(run, float("inf"))
    before = request_key(engine.scheduler), pool_key(engine.scheduler)
    bad_token = attrs.evolve(result, sampled_token_ids=[[[-1]], *result.sampled_token_ids[1:]])
    extra_row = attrs.evolve(
        result, sampled_token_ids=[[*result.sampled_token_ids[0], []], *result.sampled_token_ids[1:]]
    )
    too_long = attrs.evolve(
        result,
        sampled_token_ids=[*result.sampled_token_ids, [[3]]],
        draft_token_ids=[*result.draft_token_ids, None],
        elapsed=[*result.elapsed, 0.01],
    )
    for bad in (bad_token, extra_row, too_long):
        with pytest.raises(InvalidRequest):
            engine.scheduler.complete_run(bad)
        assert (request_key(engine.scheduler), pool_key(engine.scheduler)) == before
    engine.scheduler.complete_run(result)


def _prompt_beside_two_groups(extra_steps: int) -> Engine:
    """Two steps in flight: decodes ``a`` and ``b`` in alternating steps, then prompt ``c`` prefilling beside them
    (chunks of 16 less the decodes' tokens), ``extra_steps`` single steps after it arrived."""
    engine, _ = _build("vllm", 3, 120, 16, None, True, 1, False, 2)
    scheduler = engine.scheduler
    lengths = engine.executor.tokens._lengths  # type: ignore[attr-defined]
    for rid in ("a", "b"):
        lengths[rid] = 60
        scheduler.submit(RequestSpec(request_id=rid, prompt_token_ids=[5, 6, 7, 8], max_tokens=60, eos_token_id=0))
        engine.launch_ready()  # b is planned while a's step is in flight: the two alternate from then on
    for _ in range(6):
        engine.step()
    lengths["c"] = 5
    scheduler.submit(RequestSpec(request_id="c", prompt_token_ids=list(range(8, 208)), max_tokens=5, eos_token_id=0))
    for _ in range(1 + extra_steps):
        engine.step()
    return engine


@pytest.mark.parametrize("chunk_group", [0, 1])
def test_a_two_group_run_carries_the_chunk_in_its_groups_steps(chunk_group: int) -> None:
    """The chunk row joins the group it is in (the step in flight's, or the other) and only that group's steps
    carry a chunk, each filling the budget the step's decodes leave; the run leaves the pool, requests and
    outputs as single steps do."""
    engine = _prompt_beside_two_groups(chunk_group)
    twin = _prompt_beside_two_groups(chunk_group)
    scheduler = engine.scheduler
    offered = _record_runs(engine)
    c = scheduler.running["c"]
    start = c.state.num_computed  # type: ignore[union-attr]
    ran = engine.step_run(float("inf"), 64, chunks=True)
    assert ran is not None
    run, result = offered
    assert run.depth == 2 and run.chunk_tokens == 200 and run.chunk_group == chunk_group
    cursor = reference_replay(run, result)
    count = len(ran)
    applied = [j for j in cursor.chunks if j < count]
    assert count >= 6 and applied == list(range(chunk_group, count, 2))  # every other step: the group's
    for j in applied:  # each chunk spends what the step's decodes leave of the budget
        assert cursor.chunks[j] == 16 - sum(1 + len(d) for d in cursor.planned[j])
    assert c.state.num_computed == start + sum(cursor.chunks[j] for j in applied)  # type: ignore[union-attr]
    singles = []
    for _ in range(count):
        outputs = list(twin.step())
        singles.append((twin.executor.now(), outputs))
    assert [(t, list(o)) for t, o in ran] == singles  # the same outputs at the same times
    assert (pool_key(scheduler), request_key(scheduler)) == (pool_key(twin.scheduler), request_key(twin.scheduler))
    while scheduler.has_work or twin.scheduler.has_work:  # and both go on alike to the end
        assert list(engine.step()) == list(twin.step())
    assert (pool_key(scheduler), request_key(scheduler)) == (pool_key(twin.scheduler), request_key(twin.scheduler))
