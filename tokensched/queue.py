"""The waiting queue, kept in the policy's admission order.

How it stays in order depends on what the policy's keys depend on
(:class:`~tokensched.policies.base.KeyDependence`):

- static keys (fixed at submit): the queue is kept sorted by inserting with
  ``bisect``, so admission never sorts;
- keys that move only with the cached prefix: the same, and the scheduler's
  :class:`~tokensched.prefix_keys.PrefixKeys` moves exactly the requests whose
  key changed (:meth:`WaitingQueue.rekey`: bisect out, bisect in);
- keys that may move with anything (the clock): nobody can tell when a key
  changed, so the queue is re-sorted at steps that admit, when a request
  joined it since the last sort or every ``RESORT_EVERY`` such steps otherwise
  (re-keying a long queue every step would cost more than the order gains).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator

from tokensched.machines.request import Request
from tokensched.policies.base import KeyDependence, SortKey

RESORT_EVERY = 16


class WaitingQueue:
    __slots__ = ("_dirty", "_dynamic", "_keys", "_refresh", "_requests", "_since_sort")

    def __init__(self, dependence: KeyDependence | bool) -> None:
        """``dependence``: what the keys depend on (a bool: the policy's ``dynamic``, meaning ANY when True)."""
        if isinstance(dependence, bool):
            dependence = KeyDependence.ANY if dependence else KeyDependence.STATIC
        self._dynamic = dependence is KeyDependence.ANY  # re-sorted now and then; else kept sorted by bisect
        self._keys: list[SortKey] = []
        self._requests: list[Request] = []
        self._dirty = False
        self._since_sort = 0
        self._refresh: Callable[[], object] | None = None

    def on_read(self, refresh: Callable[[], object] | None) -> None:
        """Call ``refresh`` before the queue is iterated, so whoever reads it sees the current order."""
        self._refresh = refresh

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[Request]:
        if self._refresh is not None:
            self._refresh()
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

    def rekey(self, request: Request, old: SortKey, new: SortKey) -> None:
        """Move ``request`` (queued under key ``old``) to where key ``new`` goes: O(log n) plus a memmove."""
        if self._dynamic:
            raise ValueError("a queue re-sorted as a whole is not re-keyed one request at a time")
        i = self._find(request, old)
        if old == new:
            return
        del self._keys[i]
        del self._requests[i]
        j = bisect.bisect_right(self._keys, new)
        self._keys.insert(j, new)
        self._requests.insert(j, request)

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

    def key_at(self, index: int) -> SortKey:
        return self._keys[index]

    def pop_at(self, index: int) -> Request:
        del self._keys[index]
        return self._requests.pop(index)

    def remove(self, request: Request, key: SortKey | None = None) -> None:
        """Take ``request`` out; with the ``key`` it is queued under (a sorted queue), found by bisection."""
        if key is not None and not self._dynamic:
            i = self._find(request, key)
            del self._keys[i]
            del self._requests[i]
            return
        for i, r in enumerate(self._requests):
            if r is request:
                del self._requests[i]
                del self._keys[i]
                return
        raise ValueError(f"request {request.request_id!r} is not waiting")

    def _find(self, request: Request, key: SortKey) -> int:
        """Where ``request`` sits among the requests queued under ``key`` (equal keys keep insertion order)."""
        keys = self._keys
        requests = self._requests
        i = bisect.bisect_left(keys, key)
        while i < len(keys) and keys[i] == key:
            if requests[i] is request:
                return i
            i += 1
        raise ValueError(f"request {request.request_id!r} is not waiting under key {key}")
