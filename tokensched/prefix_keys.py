"""Each waiting request's cached prefix, kept exact from the block pool's index events.

A dynamic policy like :class:`~tokensched.policies.PrefixAwarePolicy` orders
the queue by how much of each request's prompt the prefix cache holds. That
length is the run of leading block hashes of the request's chain that the
pool's prefix index holds (:meth:`BlockPool.indexed_run`), and it changes only
when the index does:

- a block of the run leaves the index (evicted, or cleared): the run is cut
  just before it;
- the block after the run (its *frontier*) enters the index (committed): the
  run grows, by as many blocks as the index now holds past it.

So instead of re-matching every waiting request now and then,
:class:`PrefixKeys` indexes the waiting requests by the hashes that matter
(every hash of each run, and each frontier), listens to the pool
(``blocks_stored`` / ``blocks_removed`` / ``all_cleared``), and when asked
(:meth:`PrefixKeys.flush`, before each admission and whenever the queue is
read) re-keys only the requests those events touched: bisect out, bisect in.
The events themselves only append to a list inside the pool's hot
operations; they are judged against the index as it stands at the flush, so
a block evicted and recomputed in between costs nothing.

Costs: registering a request is O(its cached run) (one set insertion a
block, done once, at submit or preemption), a flush O(events + blocks that
joined or left runs), a re-key O(log n) plus a memmove. Nothing per step
scales with the queue or the cache.

Exactness is up to nothing: the run is defined by hash membership, and a
chain that repeats a hash (only a deliberately weak hash does that) is kept
exact too, at the cost of one membership test per cut block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import compress, islice, repeat
from operator import not_
from typing import ClassVar

from tokensched.errors import InvariantViolation
from tokensched.machines.blocks import BlockPool
from tokensched.machines.request import Request
from tokensched.policies.base import Policy, PolicyContext, SortKey
from tokensched.queue import WaitingQueue

_Held = tuple[Request, int] | dict[Request, int]
_SHORT = 8  # runs that move by at most this many blocks are re-indexed block by block


def _members(holders: dict[int, _Held], h: int) -> dict[Request, int]:
    """The holders of ``h`` as a dict (stored as one, from a pair or from nothing)."""
    held = holders.get(h)
    if isinstance(held, dict):
        return held
    members = {} if held is None else dict([held])
    holders[h] = members
    return members


class PrefixKeys:
    """The cached prefix of every waiting request, and (``rekey``) the queue re-keyed as it changes.

    A :class:`~tokensched.machines.blocks.BlockPoolListener`: add it to the
    pool with :meth:`BlockPool.add_listener`. With ``rekey`` False it only keeps
    the lengths (a policy whose key also moves with the clock is re-sorted as a
    whole, but reads each length in O(1)).
    """

    #: Flushes that lose cached blocks a long run is scanned in before it enters the hash index (a request
    #: still waiting then waits long: the index pays). Six measured best on the DP hour (two: more promoted).
    lazy_checks: ClassVar[int] = 6

    __slots__ = (
        "_bs",
        "_cleared",
        "_clock",
        "_dups",
        "_holders",
        "_keys",
        "_matched",
        "_policy",
        "_pool",
        "_queue",
        "_rekey",
        "_removed",
        "_stored",
        "_unheld",
        "_waiters",
    )

    def __init__(
        self,
        pool: BlockPool,
        queue: WaitingQueue,
        policy: Policy,
        clock: Callable[[], float],
        *,
        rekey: bool,
    ) -> None:
        self._pool = pool
        self._bs = pool.block_size
        self._queue = queue
        self._policy = policy
        self._clock = clock
        self._rekey = rekey
        self._matched: dict[Request, int] = {}  # blocks of its chain the index holds, from the first
        self._keys: dict[Request, SortKey] = {}  # the key it is queued under
        # hash -> the requests whose cached run holds it, and where: one (request, place) pair, or a dict of them
        self._holders: dict[int, _Held] = {}
        self._waiters: dict[int, set[Request]] = {}  # hash -> requests whose run it would extend
        self._dups: dict[Request, frozenset[int]] = {}  # hashes a chain repeats (a weak hash only)
        self._stored: list[int] = []
        self._removed: list[int] = []
        self._cleared = False
        # Waiting requests whose long run is not in ``_holders`` yet, with how many flushes that lost cached
        # blocks have scanned it: most are admitted (discarded) before the second such flush, and a scan of a
        # run against the few hashes that left costs a fraction of entering and removing it hash by hash.
        self._unheld: dict[Request, int] = {}

    # ------------------------------------------------------------ queue side
    def __len__(self) -> int:
        return len(self._matched)

    def context(self) -> PolicyContext:
        """The policy's view, reading cached prefixes from here (O(1) for a waiting request)."""
        return PolicyContext(now=self._clock(), block_size=self._bs, cached_prefix_tokens=self.cached_tokens)

    def cached_tokens(self, request: Request) -> int:
        """Tokens of ``request``'s prefix the index holds (tracked if it waits, else walked)."""
        matched = self._matched.get(request)
        if matched is None:
            return self._pool.indexed_run(request.block_hashes) * self._bs
        return matched * self._bs

    def add(self, request: Request) -> SortKey:
        """Start tracking ``request`` (it joins the queue); returns its admission key."""
        self.flush()  # the others' lengths must be current before any key is compared with theirs
        hashes = request.block_hashes
        if len(set(hashes)) != len(hashes):
            seen: set[int] = set()
            self._dups[request] = frozenset(h for h in hashes if h in seen or seen.add(h))  # type: ignore[func-returns-value]
        matched = self._pool.indexed_run(hashes)
        self._matched[request] = matched
        if matched > _SHORT:
            self._unheld[request] = 0
        else:
            self._hold_run(request, hashes, 0, matched)
        if matched < len(hashes):
            self._waiters.setdefault(hashes[matched], set()).add(request)
        key = self._policy.admission_key(request, self.context())
        self._keys[request] = key
        return key

    def key_of(self, request: Request) -> SortKey:
        return self._keys[request]

    def discard(self, request: Request) -> None:
        """Stop tracking ``request`` (it left the queue)."""
        matched = self._matched.pop(request)
        del self._keys[request]
        hashes = request.block_hashes
        if self._unheld.pop(request, None) is None:
            self._forget_run(request, hashes, 0, matched)
        if matched < len(hashes):
            self._leave(self._waiters, hashes[matched], request)
        self._dups.pop(request, None)

    # ---------------------------------------------------------- pool side
    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None:
        if self._matched:
            self._stored += block_hashes

    def blocks_removed(self, block_hashes: list[int]) -> None:
        if self._matched:
            self._removed += block_hashes

    def all_cleared(self) -> None:
        if self._matched:
            self._cleared = True

    # -------------------------------------------------------------- flush
    def flush(self) -> bool:
        """Apply the index changes heard since the last flush; returns whether the queue's order moved."""
        if not (self._removed or self._stored or self._cleared):
            return False
        changed: set[Request] = set()
        if self._cleared:
            self._cleared = False
            self._stored.clear()
            self._removed.clear()
            for request in list(self._matched):
                self._move(request, self._pool.indexed_run(request.block_hashes), changed)
        pool = self._pool
        if self._removed:
            removed, self._removed = self._removed, []
            self._cut_runs(removed, changed)
        if self._stored:
            stored, self._stored = self._stored, []
            waiters = self._waiters
            for h in stored:
                if h not in waiters or not pool.indexed(h):
                    continue
                for request in list(waiters.get(h, ())):
                    start = self._matched[request]
                    self._move(request, pool.indexed_run(request.block_hashes, start), changed)
        if not self._rekey or not changed:
            return False
        ctx = self.context()
        key = self._policy.admission_key
        moved = False
        for request in changed:
            old = self._keys[request]
            new = key(request, ctx)
            if new != old:
                self._queue.rekey(request, old, new)
                self._keys[request] = new
                moved = True
        return moved

    def _cut_runs(self, removed: list[int], changed: set[Request]) -> None:
        """Cut each run that lost a hash of ``removed`` (still out of the index) at its earliest such place.

        One move a request, to its final length, however many of its blocks
        went (an eviction takes a released run's blocks tail first, so cutting
        at each in turn would re-index a run once per block), in the order a
        hash-by-hash walk would first cut them.
        """
        holders = self._holders
        matched = self._matched
        indexed = self._pool.indexed
        cuts: dict[Request, int] = {}
        for h in removed:
            held = holders.get(h)
            if held is None or indexed(h):
                continue  # nobody's run, or back in the index already
            if isinstance(held, tuple):
                request, cut = held
                if cut < cuts.get(request, matched[request]):
                    cuts[request] = cut
            else:
                for request, cut in held.items():
                    if cut < cuts.get(request, matched[request]):
                        cuts[request] = cut
        for request, cut in cuts.items():
            self._move(request, cut, changed)
        if self._unheld:
            self._cut_unheld({h for h in removed if not indexed(h)}, changed)

    def _cut_unheld(self, gone: set[int], changed: set[Request]) -> None:
        """Cut the runs not in ``_holders`` that hold a hash of ``gone`` at its first place (as ``_holders`` keeps it).

        A run is scanned against ``gone`` in one C-level pass; one scanned
        :attr:`lazy_checks` times is then entered in ``_holders`` (it waits
        long enough for the hash-by-hash index to pay).
        """
        if not gone:
            return  # every hash that left is back: nothing to scan for
        matched = self._matched
        unheld = self._unheld
        for request, checks in list(unheld.items()):
            hashes = request.block_hashes
            run = matched[request]
            if not gone.isdisjoint(islice(hashes, run)):
                # The first place that lost its hash, in one C-level pass over the run (``min`` of each lost
                # hash's ``hashes.index`` scanned the run once per hash: an eviction takes hundreds at once).
                self._move(request, list(map(gone.__contains__, islice(hashes, run))).index(True), changed)
            if checks + 1 < self.lazy_checks:
                unheld[request] = checks + 1
            else:
                del unheld[request]
                self._hold_run(request, hashes, 0, matched[request])

    def _move(self, request: Request, matched: int, changed: set[Request]) -> None:
        """Set ``request``'s run to its first ``matched`` hashes, re-indexing what joined or left it."""
        old = self._matched[request]
        if matched == old:
            return
        hashes = request.block_hashes
        if old < len(hashes):
            self._leave(self._waiters, hashes[old], request)
        if request in self._unheld:
            pass  # not in ``_holders``: its run is scanned when the index loses blocks
        elif matched < old:
            self._forget_run(request, hashes, matched, old)
        else:
            self._hold_run(request, hashes, old, matched)
        if matched < len(hashes):
            self._waiters.setdefault(hashes[matched], set()).add(request)
        self._matched[request] = matched
        changed.add(request)

    def _hold_run(self, request: Request, hashes: list[int], start: int, end: int) -> None:
        """Enter ``request`` as a holder of ``hashes[start:end]`` (the part its run gains), each at its place.

        A hash held by one request maps to a ``(request, place)`` pair, built
        and stored in C-level passes (a session's private history is most of
        a run); only hashes already held by another request take a Python step.
        """
        holders = self._holders
        seg = hashes[start:end]
        if request in self._dups:  # a repeated hash keeps its first place
            for i, h in enumerate(seg, start):
                members = _members(holders, h)
                if request not in members:
                    members[request] = i
            return
        if len(seg) <= _SHORT:  # a run grown by a block or two: the C-level passes would cost more
            for i, h in enumerate(seg, start):
                now_held = holders.get(h)
                if now_held is None:
                    holders[h] = (request, i)
                elif isinstance(now_held, dict):
                    now_held[request] = i
                else:
                    holders[h] = {now_held[0]: now_held[1], request: i}
            return
        shared = holders.keys() & seg
        if not shared:
            holders.update(zip(seg, zip(repeat(request), range(start, end), strict=False), strict=True))
            return
        held = list(map(shared.__contains__, seg))
        alone = list(map(not_, held))
        places = compress(range(start, end), alone)
        holders.update(zip(compress(seg, alone), zip(repeat(request), places, strict=False), strict=True))
        for h, i in zip(compress(seg, held), compress(range(start, end), held), strict=True):
            other = holders[h]
            if isinstance(other, dict):
                other[request] = i
            else:
                holders[h] = {other[0]: other[1], request: i}

    def _forget_run(self, request: Request, hashes: list[int], start: int, end: int) -> None:
        """Take ``request`` out of the holders of ``hashes[start:end]`` (the part of its run it loses)."""
        holders = self._holders
        seg = hashes[start:end]
        if request in self._dups:
            for h in seg:
                members = holders.get(h)
                if members is None:
                    continue
                members = _members(holders, h)
                if members.get(request, start) < start:
                    continue  # a repeated hash, still held earlier in the run
                members.pop(request, None)
                if not members:
                    del holders[h]
            return
        if len(seg) <= _SHORT:
            for h in seg:
                held = holders[h]
                if isinstance(held, tuple):
                    del holders[h]
                else:
                    del held[request]
                    if not held:
                        del holders[h]
            return
        # One C-level pass takes every entry out (a look-up and a delete in one probe of a large dict); the
        # hashes other requests hold too (a dict of holders) go back without this request.
        values = list(map(holders.pop, seg))
        shared = list(map(isinstance, values, repeat(dict)))
        if any(shared):
            for h, members in zip(compress(seg, shared), compress(values, shared), strict=True):
                assert isinstance(members, dict)
                del members[request]
                if members:
                    holders[h] = members

    @staticmethod
    def _leave(index: dict[int, set[Request]], h: int, request: Request) -> None:
        members = index.get(h)
        if members is not None:
            members.discard(request)
            if not members:
                del index[h]

    # --------------------------------------------------------- invariants
    def check(self, waiting: list[Request]) -> None:
        """Raise InvariantViolation unless every tracked length and index entry is what a fresh walk gives.

        O(everything): for tests. Call it on a flushed tracker (iterating the queue flushes it).
        """
        problems: list[str] = []
        if set(waiting) != set(self._matched):
            problems.append("the tracked requests are not the waiting ones")
        if not self._unheld.keys() <= self._matched.keys():
            problems.append("a request left unindexed is not tracked")
        holders: dict[int, dict[Request, int]] = {}
        waiters: dict[int, set[Request]] = {}
        for request in waiting:
            hashes = request.block_hashes
            walked = self._pool.indexed_run(hashes)
            if self._matched.get(request) != walked:
                problems.append(
                    f"request {request.request_id!r}: tracked cached run {self._matched.get(request)} blocks, "
                    f"the index holds {walked}"
                )
            if request not in self._unheld:
                for i, h in enumerate(hashes[:walked]):
                    holders.setdefault(h, {}).setdefault(request, i)
            if walked < len(hashes):
                waiters.setdefault(hashes[walked], set()).add(request)
        if holders != {h: dict([v]) if isinstance(v, tuple) else v for h, v in self._holders.items()}:
            problems.append("the hash -> cached-run index is stale")
        if waiters != self._waiters:
            problems.append("the frontier index is stale")
        if problems:
            raise InvariantViolation("prefix keys: " + "; ".join(problems[:10]))
