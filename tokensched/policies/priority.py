"""Strict priority (lower value first), FCFS within a priority; the least urgent, newest request yields first."""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey
from tokensched.policies.promises import ADMISSION_IN_ORDER, VICTIMS_RANK_LAST, WORK_CONSERVING


class PriorityPolicy:
    name = "priority"
    dynamic = False
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_ORDER, WORK_CONSERVING)

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.priority, request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.priority, request.arrival_time, request.seq)
