"""SLO-aware: earliest TTFT deadline first; requests past the first token yield first.

Waiting requests are ordered by ``arrival + ttft_deadline`` (earliest deadline
first; requests without a deadline get ``default_ttft_deadline``). Among the
cached-prefix-equal this is EDF, which minimises the worst lateness on one
machine. Preemption takes a request that already has its first token (its TTFT
is met) before one still prefilling, the newest first.
"""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey
from tokensched.policies.promises import ADMISSION_IN_ORDER, VICTIMS_RANK_LAST, WORK_CONSERVING


class SLOPolicy:
    name = "slo"
    dynamic = False
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_ORDER, WORK_CONSERVING)

    def __init__(self, default_ttft_deadline: float = 10.0) -> None:
        if default_ttft_deadline <= 0:
            raise ValueError(f"default_ttft_deadline must be positive, got {default_ttft_deadline}")
        self.default_ttft_deadline = default_ttft_deadline

    def deadline(self, request: Request) -> float:
        budget = request.ttft_deadline if request.ttft_deadline is not None else self.default_ttft_deadline
        return request.arrival_time + budget

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (self.deadline(request), request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        has_first_token = request.first_token_time is not None
        return (float(has_first_token), request.arrival_time, request.seq)
