"""First come, first served; the newest arrival is preempted first (vLLM's default)."""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey
from tokensched.policies.promises import ADMISSION_IN_ORDER, VICTIMS_RANK_LAST, WORK_CONSERVING


class FCFSPolicy:
    name = "fcfs"
    dynamic = False
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_ORDER, WORK_CONSERVING)

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)
