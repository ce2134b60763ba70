"""``SimExecutor.begin_run``: a decode run stepped by its caller is the run ``launch_run`` runs in one call."""

from __future__ import annotations

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
