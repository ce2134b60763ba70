"""Longest prefix match first (SGLang's cache-aware order), FCFS among equals.

Admitting the request with the most cached tokens first turns cache hits into
admitted work before the blocks are evicted. Its keys change while a request
waits (the cache moves), so the scheduler re-keys the queue only at steps
that admit, when a request joined since the last sort and every
``RESORT_EVERY`` such steps otherwise (:mod:`tokensched.queue`): re-matching
a long queue at every step would cost more than the fresher order gains.
Its promise is therefore admission in its order *as of the latest re-sort*
(:data:`~tokensched.policies.promises.ADMISSION_IN_SORTED_ORDER`).
"""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import PolicyContext, SortKey
from tokensched.policies.promises import ADMISSION_IN_SORTED_ORDER, VICTIMS_RANK_LAST, WORK_CONSERVING


class PrefixAwarePolicy:
    name = "prefix-aware"
    dynamic = True
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_SORTED_ORDER, WORK_CONSERVING)

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (-ctx.cached_prefix_tokens(request), request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)
