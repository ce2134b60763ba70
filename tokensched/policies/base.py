"""The policy plug-in: which waiting request is admitted first, which running one is preempted first.

A policy answers two questions with sort keys, so the scheduler keeps the
waiting queue sorted as requests arrive instead of re-sorting it every step:

- ``admission_key``: smaller is admitted first;
- ``victim_key``: larger is preempted first when KV blocks run out.

A policy whose admission order depends on things that change while a request
waits (cache contents, the clock) sets ``dynamic = True``; the scheduler then
re-sorts the waiting queue at each step that admits. Requests are passed as
the scheduler's own objects: read them, never modify them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs

from tokensched.machines.request import Request

SortKey = tuple[float, ...]


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
