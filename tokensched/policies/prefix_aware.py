"""Longest prefix match first (SGLang's cache-aware order), FCFS among equals.

Admitting the request with the most cached tokens first turns cache hits into
admitted work before the blocks are evicted. ``max_queue_for_matching`` bounds
the per-step cost: beyond it the queue falls back to arrival order, as
re-matching a long queue every step would cost more than it saves.
"""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey
from tokensched.policies.promises import VICTIMS_RANK_LAST, WORK_CONSERVING


class PrefixAwarePolicy:
    name = "prefix-aware"
    dynamic = True
    promises = (VICTIMS_RANK_LAST, WORK_CONSERVING)  # order: as fresh as its latest re-sort

    def __init__(self, max_queue_for_matching: int = 256) -> None:
        self.max_queue_for_matching = max_queue_for_matching

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (-ctx.cached_prefix_tokens(request), request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)
