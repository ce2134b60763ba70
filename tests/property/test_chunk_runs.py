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
    engine: str, spec_tokens: int, blocks: int, budget: int, cap: int | None, caching: bool, seed: int, aware: bool
) -> tuple[Engine, KVEventRecorder]:
    """``engine`` names the serving engine; with ``"sglang-mla"`` SGLang over the default MLA model (a chunk's
    cached context then costs an up-projection of its own), else a dense model."""
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
        max_steps_in_flight=1,
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
        run = scheduler.plan_run(64, cross_blocks=True, chunks=True) if runs and not engine.num_in_flight else None
        if run is None:
            outputs = list(engine.step())
            steps.append((executor.now(), outputs))
        else:
            result = executor.launch_run(run, until)
            applied = scheduler.complete_run(result)
            steps.extend((t, list(o)) for t, o in zip(result.end_times, applied, strict=True))
            if run.chunk_tokens:
                took = sum(1 for j in range(len(applied)) if j in _chunks_of(run, result))
                chunk_steps += took
                event(f"a run with a prefill chunk of {min(took, 5)}+ chunk steps")
                if len(scheduler.waiting):
                    event("a run with a prefill chunk while a request waits")
        marks.append((len(steps), _state(engine, recorder)))
    if runs:
        chunked = "none" if not chunk_steps else "1-9" if chunk_steps < 10 else "10+"
        event(f"steps taken from runs with a prefill chunk: {chunked}")
    return steps, marks


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
) -> None:
    specs = _traffic(items)
    single = _drive(*_build(engine, spec_tokens, blocks, budget, cap, caching, seed, aware), specs, runs=False)
    multi = _drive(*_build(engine, spec_tokens, blocks, budget, cap, caching, seed, aware), specs, runs=True)
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
