"""The waiting queue, kept in the policy's admission order.

For a static policy (keys fixed at submit) the queue stays sorted by insertion
with ``bisect``, so admission never sorts. A dynamic policy's keys change while
requests wait; the queue is re-sorted, only at steps that admit.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from tokensched.machines.request import Request
from tokensched.policies.base import SortKey


class WaitingQueue:
    __slots__ = ("_dynamic", "_keys", "_requests")

    def __init__(self, dynamic: bool) -> None:
        self._dynamic = dynamic
        self._keys: list[SortKey] = []
        self._requests: list[Request] = []

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def __bool__(self) -> bool:
        return bool(self._requests)

    def push(self, request: Request, key: SortKey) -> None:
        if self._dynamic:
            self._keys.append(key)
            self._requests.append(request)
            return
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._requests.insert(i, request)

    def resort(self, key: Callable[[Request], SortKey]) -> None:
        """Re-order by fresh keys (dynamic policies only; a no-op for static ones)."""
        if not self._dynamic or len(self._requests) < 2:
            return
        pairs = sorted(((key(r), r.seq, r) for r in self._requests), key=lambda p: (p[0], p[1]))
        self._keys = [p[0] for p in pairs]
        self._requests = [p[2] for p in pairs]

    def head(self) -> Request:
        return self._requests[0]

    def pop_head(self) -> Request:
        self._keys.pop(0)
        return self._requests.pop(0)

    def remove(self, request: Request) -> None:
        for i, r in enumerate(self._requests):
            if r is request:
                del self._requests[i]
                del self._keys[i]
                return
        raise ValueError(f"request {request.request_id!r} is not waiting")
