"""Scheduler bugs first seen through the torch executor, kept as end-to-end regressions."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokensched import Engine, RequestSpec  # noqa: E402
from tokensched_torch import TorchExecutor  # noqa: E402
from tokensched_torch.model import MLAModel  # noqa: E402


def test_two_requests_never_preempt_each_other_forever(model: MLAModel) -> None:
    """With overlap, preempting a request in flight freed nothing (its blocks went PENDING), so the
    requester preempted itself too and both were readmitted, step after step. Victims in flight are
    now passed over, and the requester waits for the step in flight instead."""
    executor = TorchExecutor(model=model, num_blocks=8, block_size=4, dtype=torch.float64)
    engine = Engine.create(
        executor,
        max_batched_tokens=12,
        max_steps_in_flight=2,
        num_speculative_tokens=2,
        enable_prefix_caching=False,
    )
    s = engine.scheduler

    def step(n: int) -> None:
        for _ in range(n):
            engine.step()

    s.submit(RequestSpec(request_id="r1", prompt_token_ids=[0], max_tokens=1))
    step(1)
    prompt2 = [207, 155, 244, 183, 111, 71, 144, 71, 48] + [0] * 7
    s.submit(RequestSpec(request_id="r2", prompt_token_ids=prompt2, max_tokens=6))
    s.submit(RequestSpec(request_id="r3", prompt_token_ids=[0], max_tokens=1))
    step(2)
    s.submit(RequestSpec(request_id="r4", prompt_token_ids=[197, 215, 20, 132, 248, 0], max_tokens=5))
    for _ in range(200):
        if not s.has_work:
            break
        engine.step()
        s.check_invariants()
    assert not s.has_work, f"still live after 200 steps: {sorted(s.live)}"
