"""Longest prefix match first (SGLang's cache-aware order), FCFS among equals.

Admitting the request with the most cached tokens first turns cache hits into
admitted work before the blocks are evicted. Its key depends on the cached
prefix and on fields fixed while a request waits, nothing else, and it says so
(``key_depends_on``): the scheduler then re-keys exactly the requests whose
cached prefix a commit or an eviction changed (:mod:`tokensched.prefix_keys`),
so the queue is in the policy's current order at every admission, at a cost
proportional to what changed. Its promise is admission in that current order
(:data:`~tokensched.policies.promises.ADMISSION_IN_CURRENT_ORDER`).
"""

from __future__ import annotations

from tokensched.machines.request import Request
from tokensched.policies.base import KeyDependence, PolicyContext, SortKey
from tokensched.policies.promises import ADMISSION_IN_CURRENT_ORDER, VICTIMS_RANK_LAST, WORK_CONSERVING


class PrefixAwarePolicy:
    name = "prefix-aware"
    dynamic = True
    key_depends_on = KeyDependence.CACHED_PREFIX
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_CURRENT_ORDER, WORK_CONSERVING)

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (-ctx.cached_prefix_tokens(request), request.arrival_time, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.arrival_time, request.seq)
