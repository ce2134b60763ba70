"""Writing a scheduling policy and property-testing it with tokensched.testing.

The policy: shortest remaining prompt first (prefills that finish soonest get
their first token soonest), and preempt the request with the most KV to
recompute last, i.e. the one with the least progress first. About 30 lines.

The state machine checks, after every plan, every scheduler invariant and the
policy's promises (``tokensched.policies.promises``): a policy that declares
none gets the defaults (victims rank last, work conserving, and admission in
its order); this one adds a promise of its own, in its own terms, to show how.
Its key moves with the cached prefix only, and it says so (``key_depends_on``):
the scheduler then re-keys exactly the requests whose cached prefix changed,
and the promise is admission in its *current* order.

    python examples/custom_policy.py          # runs the property test
"""

from __future__ import annotations

from hypothesis import settings

from tokensched.machines.request import Request
from tokensched.policies import KeyDependence, PolicyContext, SortKey
from tokensched.policies.promises import (
    ADMISSION_IN_CURRENT_ORDER,
    VICTIMS_RANK_LAST,
    WORK_CONSERVING,
    Promise,
    StepRecord,
)
from tokensched.testing import SchedulerStateMachine


def _least_progress_yields(record: StepRecord) -> str | None:
    """No request preempted in a step has more output tokens than one that keeps running."""
    for victim in record.preempted:
        for kept in record.kept:
            if victim.num_output_tokens > kept.num_output_tokens:
                return f"{victim.request_id!r} yielded with more outputs than {kept.request_id!r}"
    return None


LEAST_PROGRESS_YIELDS = Promise("least progress yields", "victims have the fewest outputs", _least_progress_yields)


class ShortestPromptFirst:
    """Admit the request with the fewest uncached tokens first; preempt the one with the least progress."""

    name = "shortest-prompt-first"
    dynamic = True  # the uncached part depends on the cache, which changes while requests wait
    key_depends_on = KeyDependence.CACHED_PREFIX  # ... and on nothing else that moves: re-keyed exactly
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_CURRENT_ORDER, WORK_CONSERVING, LEAST_PROGRESS_YIELDS)

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        uncached = len(request.tokens) - ctx.cached_prefix_tokens(request)
        return (uncached, request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (-request.num_output_tokens, request.arrival_time, request.seq)


class ShortestPromptFirstMachine(SchedulerStateMachine):
    """Every scheduler invariant, liveness included, and the policy's promises, under the custom policy."""

    def make_policy(self) -> ShortestPromptFirst:
        return ShortestPromptFirst()


TestShortestPromptFirst = ShortestPromptFirstMachine.TestCase
TestShortestPromptFirst.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def main() -> None:
    TestShortestPromptFirst().runTest()
    names = ", ".join(p.name for p in ShortestPromptFirst.promises)
    print(f"ShortestPromptFirst: every invariant and promise ({names}) held over 100 random scheduler runs")


if __name__ == "__main__":
    main()
