"""First come, first served; the newest arrival is preempted first (vLLM's default)."""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey


class FCFSPolicy:
    name = "fcfs"
    dynamic = False

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)
