"""Drive two model runners with the same scheduler-built plans and hand each step's logits to a check.

The reference runner's greedy tokens (accepted drafts plus one more, as the
executor samples) are fed back to both runners and to the scheduler, so the two
never diverge and every step's logits are comparable row for row. Up to two
steps are kept in flight: a plan is made before the previous step is completed,
so decodes arrive with placeholder tokens that each runner's mirror resolves.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence

import attrs

from tests.torch.checks import greedy_result as torch_greedy_result
from tokensched import RequestSpec, SchedulerConfig, StepPlan, StepResult
from tokensched.executor import MirroredRequest
from tokensched.scheduler import Scheduler
from tokensched_torch import ModelRunner, NgramDrafter, StepForward

Check = Callable[[StepPlan, StepForward, StepForward | None], None]


@attrs.define
class Run:
    """What a side-by-side run saw: every plan, and how many tokens each kind of request step had."""

    plans: list[StepPlan] = attrs.field(factory=list)
    prefix_hit_tokens: int = 0
    max_chunk_tokens: int = 0
    mixed_steps: int = 0  # steps with both a multi-token (prefill / verify) and a single-token request


def shared_prefix_workload(vocab: int, *, prefix: int = 40, seed: int = 0) -> dict[int, list[RequestSpec]]:
    """Arrivals by step: sessions whose later turns share an earlier prompt's first blocks."""
    import random

    rng = random.Random(seed)
    base = [rng.randrange(vocab) for _ in range(prefix)]

    def spec(rid: str, tokens: list[int], max_tokens: int) -> RequestSpec:
        return RequestSpec(request_id=rid, prompt_token_ids=tokens, max_tokens=max_tokens, ignore_eos=True)

    return {
        0: [spec("a", base + [rng.randrange(vocab) for _ in range(9)], 8), spec("b", [3, 1, 4, 1, 5], 12)],
        2: [spec("c", [rng.randrange(vocab) for _ in range(30)], 6)],
        # Arrive once "a" has committed its prompt blocks: prefix cache hits on them.
        6: [spec("d", [*base, 7, 7, 7], 6), spec("e", base[:24] + [rng.randrange(vocab) for _ in range(20)], 5)],
        9: [spec("f", [2] * 3, 4)],
    }


def greedy_result(
    plan: StepPlan, forward: StepForward, drafter: NgramDrafter | None, history: Mapping[str, MirroredRequest], k: int
) -> StepResult:
    """Greedy tokens from all-row logits (verified drafts, then one more), and drafts for the next step."""
    sampled = torch_greedy_result(plan, forward).sampled_token_ids
    proposals = None
    if drafter is not None:
        proposals = [
            drafter.propose([*history[rid].token_ids, *tokens], k) if tokens else []
            for rid, tokens in zip(plan.request_ids, sampled, strict=True)
        ]
    return StepResult(step_id=plan.step_id, sampled_token_ids=sampled, draft_token_ids=proposals)


def run_side_by_side(
    config: SchedulerConfig,
    reference: ModelRunner,
    candidate: ModelRunner | None,
    arrivals: Mapping[int, Sequence[RequestSpec]],
    check: Check,
    *,
    max_steps: int = 200,
) -> Run:
    """Run ``arrivals`` (step index -> requests submitted then) to completion through both runners.

    ``check(plan, reference_forward, candidate_forward)`` runs after both executed
    the plan and before either records its tokens; without a candidate it gets None.
    """
    sched = Scheduler(config)
    k = config.num_speculative_tokens
    drafter = NgramDrafter() if k else None
    run = Run()
    pending: deque[tuple[StepPlan, StepResult]] = deque()
    for tick in range(max_steps):
        for spec in arrivals.get(tick, ()):
            sched.submit(spec)
        plan = sched.plan()
        if plan is not None:
            ref = reference.execute(plan, all_logits=True)
            cand = candidate.execute(plan, all_logits=True) if candidate is not None else None
            check(plan, ref, cand)
            result = greedy_result(plan, ref, drafter, reference.mirror.requests, k)
            reference.finish(plan, result)
            if candidate is not None:
                candidate.finish(plan, result)
            pending.append((plan, result))
            _record(run, plan)
        if pending and (plan is None or len(pending) >= config.max_steps_in_flight):
            sched.complete(pending.popleft()[1])
        if not sched.has_work and tick >= max(arrivals):
            break
    else:
        raise AssertionError(f"workload did not finish in {max_steps} steps")
    sched.check_invariants()
    run.prefix_hit_tokens = sched.stats().prefix_hit_tokens
    return run


def _record(run: Run, plan: StepPlan) -> None:
    run.plans.append(plan)
    sizes = [plan.num_scheduled_tokens(i) for i in range(plan.num_requests)]
    run.max_chunk_tokens = max(run.max_chunk_tokens, *sizes)
    if max(sizes) > 1 and min(sizes) == 1:
        run.mixed_steps += 1
