"""What the engine thread notes about each step for the metrics: when requests first ran, and their drafts.

:class:`StepWatch` sits between the :class:`~tokensched.Engine` and the
executor and passes every call through, recording on the way the wall time
a request is first launched (``StepPlan.new_requests``: O(new requests) per
step) and, with speculative decoding, how many drafts each step verified and
how many were accepted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import attrs

from tokensched import Executor
from tokensched.plan import StepPlan, StepResult


@attrs.define(slots=True)
class SpecDecodeCounters:
    """Draft tokens verified and accepted, in vLLM's terms (``vllm/v1/spec_decode/metrics.py``).

    A *draft* is one request's proposed tokens in one step; a draft token is
    accepted when verification kept it (the sampled tokens are the accepted
    drafts then one bonus token). Written by the engine thread, read by scrapes.
    """

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = attrs.field(factory=list)

    def record(self, plan_drafts: Sequence[Sequence[int]], sampled: Sequence[Sequence[int]]) -> None:
        for drafts, tokens in zip(plan_drafts, sampled, strict=False):
            if not drafts or not tokens:
                continue
            accepted = min(len(tokens) - 1, len(drafts))
            self.num_drafts += 1
            self.num_draft_tokens += len(drafts)
            self.num_accepted_tokens += accepted
            if len(self.accepted_per_position) < len(drafts):
                self.accepted_per_position.extend([0] * (len(drafts) - len(self.accepted_per_position)))
            for position in range(accepted):
                self.accepted_per_position[position] += 1


class StepWatch:
    """The executor, noting the wall time each request is first launched in a step (for queue-time metrics),
    and, when speculative decoding is on, the drafts each step verified and how many were accepted.

    ``StepPlan.new_requests`` names the requests entering the running set, so
    this costs O(new requests) per step; a resumed request keeps its first time.
    """

    def __init__(
        self, executor: Executor, launched_at: dict[str, float], spec: SpecDecodeCounters | None = None
    ) -> None:
        self._executor = executor
        self._launched_at = launched_at
        self._spec = spec
        self._drafts: deque[list[tuple[int, ...]]] = deque()  # per step in flight, oldest first

    @property
    def block_size(self) -> int:
        return self._executor.block_size

    @property
    def num_kv_blocks(self) -> int:
        return self._executor.num_kv_blocks

    def launch(self, plan: StepPlan) -> None:
        now = time.perf_counter()
        for new in plan.new_requests:
            self._launched_at.setdefault(new.request_id, now)
        self._executor.launch(plan)
        if self._spec is not None:
            self._drafts.append(plan.draft_token_ids)

    def collect(self) -> StepResult:
        drafts = self._drafts.popleft() if self._spec is not None and self._drafts else None
        result = self._executor.collect()  # a failed step raises here: its drafts were verified by nobody
        if self._spec is not None and drafts is not None:
            self._spec.record(drafts, result.sampled_token_ids)
        return result

    def now(self) -> float:
        return self._executor.now()

    def wait_until(self, t: float) -> None:
        self._executor.wait_until(t)
