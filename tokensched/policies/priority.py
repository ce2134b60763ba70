"""Strict priority (lower value first), FCFS within a priority; the least urgent, newest request yields first."""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey


class PriorityPolicy:
    name = "priority"
    dynamic = False

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.priority, request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.priority, request.arrival_time, request.seq)
