"""The waiting queue, kept in the policy's admission order.

For a static policy (keys fixed at submit) the queue stays sorted by insertion
with ``bisect``, so admission never sorts. A dynamic policy's keys change while
requests wait; the queue is re-sorted at steps that admit, when a request
joined it since the last sort or every ``RESORT_EVERY`` such steps otherwise
(cache contents drift slowly; re-keying a long queue every step would cost
more than the order gains).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from tokensched.machines.request import Request
from tokensched.policies.base import SortKey

RESORT_EVERY = 16


class WaitingQueue:
    __slots__ = ("_dirty", "_dynamic", "_keys", "_requests", "_since_sort")

    def __init__(self, dynamic: bool) -> None:
        self._dynamic = dynamic
        self._keys: list[SortKey] = []
        self._requests: list[Request] = []
        self._dirty = False
        self._since_sort = 0

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
            self._dirty = True
            return
        i = bisect.bisect_right(self._keys, key)
        self._keys.insert(i, key)
        self._requests.insert(i, request)

    def needs_resort(self) -> bool:
        """Whether a dynamic queue should be re-keyed now (counts the steps that ask)."""
        if not self._dynamic or len(self._requests) < 2:
            return False
        self._since_sort += 1
        return self._dirty or self._since_sort >= RESORT_EVERY

    def resort(self, key: Callable[[Request], SortKey]) -> None:
        """Re-order by fresh keys (dynamic policies only; a no-op for static ones)."""
        self._dirty = False
        self._since_sort = 0
        if not self._dynamic or len(self._requests) < 2:
            return
        pairs = sorted(((key(r), r.seq, r) for r in self._requests), key=lambda p: (p[0], p[1]))
        self._keys = [p[0] for p in pairs]
        self._requests = [p[2] for p in pairs]

    def at(self, index: int) -> Request:
        return self._requests[index]

    def pop_at(self, index: int) -> Request:
        del self._keys[index]
        return self._requests.pop(index)

    def remove(self, request: Request) -> None:
        for i, r in enumerate(self._requests):
            if r is request:
                del self._requests[i]
                del self._keys[i]
                return
        raise ValueError(f"request {request.request_id!r} is not waiting")
