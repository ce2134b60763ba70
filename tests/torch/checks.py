"""Run a plan through a ModelRunner and compare every logit row with the dense reference."""

from __future__ import annotations

import torch

from tests.torch.plans import HandPlanner
from tokensched.plan import StepPlan, StepResult
from tokensched_torch import ModelRunner, StepForward, dense_reference_logits

ATOL = 1e-9  # float64 throughout: paged and dense differ only by summation order


def execute_and_check(runner: ModelRunner, plan: StepPlan) -> StepForward:
    """Execute ``plan`` and assert each request's rows equal a dense forward over what it has seen."""
    forward = runner.execute(plan, all_logits=True)
    for i, request_id in enumerate(plan.request_ids):
        lo, hi = plan.token_offsets[i], plan.token_offsets[i + 1]
        start = plan.num_computed_tokens[i]
        context = runner.mirror.requests[request_id].token_ids[:start] + forward.token_ids[lo:hi]
        expected = dense_reference_logits(runner.model, context)[start:]
        torch.testing.assert_close(forward.logits[lo:hi], expected, atol=ATOL, rtol=0)
    return forward


def greedy_result(plan: StepPlan, forward: StepForward) -> StepResult:
    """Greedy tokens from all-row logits: verified drafts then one more, like the executor."""
    argmax = forward.logits.argmax(dim=-1).tolist()
    sampled: list[list[int]] = []
    for i in range(plan.num_requests):
        if not plan.sample[i]:
            sampled.append([])
            continue
        drafts = plan.draft_token_ids[i]
        first = plan.token_offsets[i + 1] - len(drafts) - 1
        tokens = [argmax[first]]
        for j, draft in enumerate(drafts):
            if tokens[-1] != draft:
                break
            tokens.append(argmax[first + j + 1])
        sampled.append(tokens)
    return StepResult(step_id=plan.step_id, sampled_token_ids=sampled)


def step(runner: ModelRunner, planner: HandPlanner, plan: StepPlan) -> StepResult:
    """Execute and check one plan, then feed its greedy tokens back to the runner and the planner."""
    forward = execute_and_check(runner, plan)
    result = greedy_result(plan, forward)
    runner.finish(plan, result)
    planner.apply(plan, result)
    return result
