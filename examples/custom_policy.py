"""Writing a scheduling policy and property-testing it with tokensched.testing.

The policy: shortest remaining prompt first (prefills that finish soonest get
their first token soonest), and preempt the request with the most KV to
recompute last, i.e. the one with the least progress first. About 30 lines.

    python examples/custom_policy.py          # runs the property test
"""

from __future__ import annotations

from hypothesis import settings

from tokensched.machines.request import Request
from tokensched.policies import PolicyContext, SortKey
from tokensched.testing import SchedulerStateMachine


class ShortestPromptFirst:
    """Admit the request with the fewest uncached tokens first; preempt the one with the least progress."""

    name = "shortest-prompt-first"
    dynamic = True  # the uncached part depends on the cache, which changes while requests wait

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        uncached = len(request.tokens) - ctx.cached_prefix_tokens(request)
        return (uncached, request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (-request.num_output_tokens, request.arrival_time, request.seq)


class ShortestPromptFirstMachine(SchedulerStateMachine):
    """Every scheduler invariant, liveness included, under the custom policy."""

    def make_policy(self) -> ShortestPromptFirst:
        return ShortestPromptFirst()


TestShortestPromptFirst = ShortestPromptFirstMachine.TestCase
TestShortestPromptFirst.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)


def main() -> None:
    TestShortestPromptFirst().runTest()
    print("ShortestPromptFirst: every invariant held over 100 random scheduler runs")


if __name__ == "__main__":
    main()
