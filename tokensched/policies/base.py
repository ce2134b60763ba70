"""The policy plug-in: which waiting request is admitted first, which running one is preempted first.

A policy answers two questions with sort keys, so the scheduler keeps the
waiting queue sorted as requests arrive instead of re-sorting it every step:

- ``admission_key``: smaller is admitted first;
- ``victim_key``: larger is preempted first when KV blocks run out.

A policy whose admission order depends on things that change while a request
waits (cache contents, the clock) sets ``dynamic = True``. How the scheduler
keeps its queue in order then depends on what the keys depend on, which a
policy declares as ``key_depends_on`` (see :func:`key_dependence`):

- :attr:`KeyDependence.CACHED_PREFIX`: the key is a function of the request's
  cached prefix (``ctx.cached_prefix_tokens``) and of fields fixed while it
  waits (arrival, priority, prompt, seq), nothing else. The scheduler then
  knows exactly when a key changes (a block of the request's cached run is
  evicted, or the block after it is committed), hears it from the block pool
  and re-keys only those requests: the queue is in the policy's current order
  at every admission, at a cost proportional to what changed.
- :attr:`KeyDependence.ANY` (the default for a dynamic policy): anything else
  may move the key (the clock, say), so the scheduler cannot know when; it
  re-sorts the whole queue at admitting steps when a request joined and every
  ``RESORT_EVERY`` such steps otherwise (:mod:`tokensched.queue`).

Requests are passed as the scheduler's own objects: read them, never modify them.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import Protocol

import attrs

from tokensched.machines.request import Request

SortKey = tuple[float, ...]


class KeyDependence(Enum):
    """What a policy's admission key may change with while a request waits."""

    STATIC = "static"  # nothing: fixed at submit (``dynamic = False``)
    CACHED_PREFIX = "cached-prefix"  # the cached prefix and fields fixed while waiting: re-keyed exactly, O(changed)
    ANY = "any"  # anything (the clock): the whole queue is re-sorted now and then


@attrs.frozen(slots=True)
class PolicyContext:
    """What a policy may look at besides the request."""

    now: float
    block_size: int
    cached_prefix_tokens: Callable[[Request], int]  # tokens the prefix cache would serve it now


class Policy(Protocol):
    name: str
    dynamic: bool

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey: ...

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey: ...


def key_dependence(policy: Policy) -> KeyDependence:
    """What ``policy``'s admission key depends on: its ``key_depends_on`` if it declares one, else from ``dynamic``.

    Raises ValueError for a declaration that contradicts ``dynamic`` (a static
    policy whose key moves with the cache, or the reverse).
    """
    declared = getattr(policy, "key_depends_on", None)
    if declared is None:
        return KeyDependence.ANY if policy.dynamic else KeyDependence.STATIC
    if not isinstance(declared, KeyDependence):
        raise ValueError(f"policy {policy.name!r}: key_depends_on must be a KeyDependence, got {declared!r}")
    if (declared is KeyDependence.STATIC) == policy.dynamic:
        raise ValueError(
            f"policy {policy.name!r}: key_depends_on={declared.value} contradicts dynamic={policy.dynamic}"
        )
    return declared
