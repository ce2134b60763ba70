"""Session KV retention: keep a finished turn's cache for the session's next turn, for a while.

A coding agent's next turn arrives a few seconds after its previous answer,
and shares all of it. On a cache too small for every active session, plain
LRU lets a cold first turn (45-50k tokens) evict a warm session's history
during its think time; the next turn then recomputes 100k+ tokens instead of
800, and under load every session ends up cold (the cache thrashes).

With retention on, the blocks of a session whose turn just finished are
protected from admissions of *other* requests for ``window_s`` seconds: a
waiting request is admitted only if it fits beside them. The session's own
next turn uses them as usual, and running requests may still evict them when
they need room (retention never stalls work already admitted). A request that
has waited ``window_s`` ignores the protection, so nothing starves longer than
the window, and an idle scheduler ignores it too (it is work-conserving: the
GPU never waits for a turn that may come).
"""

from __future__ import annotations

from collections import OrderedDict

from tokensched.machines.blocks import BlockPool
from tokensched.machines.request import Request

MAX_PASSED_OVER = 8  # how far past a head held back by retention admission looks for a warm turn


class SessionRetention:
    __slots__ = ("_pool", "_until", "window_s")

    def __init__(self, window_s: float, pool: BlockPool) -> None:
        self.window_s = window_s
        self._pool = pool
        self._until: OrderedDict[str, tuple[float, Request]] = OrderedDict()  # deadline order

    def __len__(self) -> int:
        return len(self._until)

    def retain(self, request: Request, now: float) -> None:
        """Protect the cache of ``request``'s session (its turn just finished) until ``now + window_s``."""
        sid = request.session_id
        if sid is None:
            return
        self._until.pop(sid, None)
        self._until[sid] = (now + self.window_s, request)

    def next_expiry(self) -> float:
        """The earliest moment a session's protection may lapse (inf: none is retained); nothing expires before it."""
        until = self._until
        return next(iter(until.values()))[0] if until else float("inf")

    def sessions(self) -> frozenset[str]:
        return frozenset(self._until)

    def holds(self, session_id: str | None) -> bool:
        """Whether ``session_id``'s cache is retained (its next turn is warm)."""
        return session_id is not None and session_id in self._until

    def forget(self, session_id: str | None) -> None:
        """The session's next turn is being admitted: it uses the blocks, they need no protection."""
        if session_id is not None:
            self._until.pop(session_id, None)

    def protected_blocks(self, request: Request, now: float) -> int:
        """Free blocks ``request`` must leave alone: other sessions' retained caches, unless it waited too long."""
        until = self._expire(now)
        if not until or now - request.arrival_time >= self.window_s:
            return 0
        own = request.session_id
        return sum(self._evictable_tail(r) for sid, (_, r) in until.items() if sid != own)

    def tails(self, now: float) -> dict[str, int]:
        """Each session retained at ``now`` with its evictable tail (the sessions expired by then dropped first).

        For a caller that asks :meth:`protected_from` about several queued
        requests while the pool stands still (a look at whether admission
        stays shut): each tail is a walk of a session's chain, so they are
        summed once, not once for every request looked at.
        """
        return {sid: self._evictable_tail(r) for sid, (_, r) in self._expire(now).items()}

    def protected_from(self, tails: dict[str, int] | None, request: Request, now: float) -> int:
        """:meth:`protected_blocks` of ``request`` from ``tails(now)``, taken at the same ``now`` and pool state.

        ``tails`` may be None only for a request that waited the window (the
        caller need not walk the chains for it); the sessions lapsed by ``now``
        are dropped all the same, as :meth:`protected_blocks` drops them.
        """
        self._expire(now)
        if not tails or now - request.arrival_time >= self.window_s:
            return 0
        own = request.session_id
        return sum(tails.values()) - (tails.get(own, 0) if own is not None else 0)

    def _expire(self, now: float) -> OrderedDict[str, tuple[float, Request]]:
        """Drop the sessions whose protection lapsed before ``now``; returns those left, in deadline order."""
        until = self._until
        while until and next(iter(until.values()))[0] < now:
            until.popitem(last=False)
        return until

    def _evictable_tail(self, request: Request) -> int:
        """Blocks of ``request``'s chain that are cached but held by nobody (they count as free).

        Cached blocks form a prefix of the chain (blocks are released tail
        first), and so do held ones (a shared system prompt): the difference of
        the two lengths.
        """
        hashes = request.block_hashes
        return self._pool.cached_prefix_length(hashes) - self._pool.cached_prefix_length(hashes, held=True)
