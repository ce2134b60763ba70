"""Which cached block goes when the pool needs room: eviction as a policy, like admission.

The :class:`~tokensched.machines.blocks.BlockPool` keeps EVICTABLE blocks (cached
content nobody holds) in an :class:`EvictionPolicy` and asks it for the next
victim when the free list is empty. Every policy is O(1) or O(log n) per
operation:

- :class:`LRUEviction` (default, vLLM's order): least recently released first; O(1).
- :class:`LFUEviction`: fewest prefix hits first, with dynamic ageing (LFU-DA,
  Arlitt et al. 2000): a block's score is its hit count plus the score of the
  last block evicted, so content that was popular long ago cannot stay forever;
  O(log n) with a lazily pruned heap.
- :class:`CostAwareEviction`: what is cheapest to lose relative to its reuse
  first. Prefix hits stop at the first missing block of a hash chain, so
  evicting the block at depth ``d`` costs a recompute of it *and of every
  cached block after it*: the deeper the block, the less is lost. Its value is
  ``(hits + 1) / (depth + 1)``: a chain is eaten from its tail, a cold
  session's blocks go before a warm one's prefix, and a shared system prompt
  (many hits, shallow) goes last. Aged like LFU; O(log n).
- :class:`PinnedEviction`: wraps another policy and never evicts a block whose
  content is pinned (say a system prompt), for up to ``cap`` pinned blocks;
  beyond the cap, pinned blocks are evicted like the others.

Hits are counted per content hash (a block's content outlives the block id
that holds it), in a dict bounded by the pool's size.
"""

from __future__ import annotations

import heapq
import itertools
from array import array
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import ClassVar, Protocol

import numpy as np
import numpy.typing as npt

_SLACK = 4096  # stale places the LRU queue may carry beyond the live ones before it compacts


class EvictionPolicy(Protocol):
    name: str

    def __len__(self) -> int: ...

    def __contains__(self, block: int) -> bool: ...

    def add(self, block: int, block_hash: int, depth: int) -> None:
        """``block`` (content ``block_hash`` at ``depth`` in its chain) became EVICTABLE."""

    def add_many(
        self, blocks: npt.NDArray[np.int64], block_hashes: Iterable[int], depths: npt.NDArray[np.int64]
    ) -> None:
        """:meth:`add` each of ``blocks`` in order (distinct ids, none held; a finished 200k-token request
        lets 12.5k go at once); ``block_hashes`` is consumed lazily, in order, by a policy that needs them."""

    def remove(self, block: int) -> None:
        """``block`` was shared again (a prefix hit revived it)."""

    def pop(self) -> int:
        """Remove and return the block to evict next (the caller checks that one is there)."""

    def pop_many(self, k: int) -> list[int]:
        """:meth:`pop` ``k`` times, in order (the caller checks that ``k`` are there)."""

    def hit(self, block_hash: int) -> None:
        """A request matched content ``block_hash`` (COMMITTED or EVICTABLE) from the cache."""

    def remove_many(self, blocks: npt.NDArray[np.int64]) -> None:
        """:meth:`remove` each of ``blocks`` (distinct ids; a long prefix hit revives thousands at once)."""

    def hit_many(self, block_hashes: Iterable[int]) -> None:
        """:meth:`hit` each of ``block_hashes`` in order; a policy that ignores hits need not iterate."""

    def order(self) -> list[int]:
        """The blocks held, in the order they would be evicted (O(n log n); checks and tests only)."""

    def peek(self, k: int) -> list[int]:
        """The next ``k`` blocks to evict, in order, without evicting them (the host tier writes them back)."""


class LRUEviction:
    """Least recently released first, as a queue of released runs; O(1) a block, one array pass a run.

    Why a queue of runs and not an ordered dict: a finished 200k-token request
    lets 12.5k blocks go at once and a long admission evicts as many, and an
    ordered dict pays a Python-level link or unlink per block both ways. Here a
    released run is one entry holding its block ids (an array, or a list
    gathering single releases), and every block carries the sequence number of
    its one live place in the queue (``_seq``, -1 when not held). A revival or
    a second release only changes that number, so the old place goes stale
    and is skipped when the front of the queue reaches it: evicting ``k``
    blocks is one array comparison per run touched. Stale places are dropped
    by a compaction once they outnumber the live ones, so the queue stays
    bounded by twice the blocks held (plus a constant).
    """

    name = "lru"
    #: Evictions of up to this many blocks walk the queue in Python (:meth:`_pop_few`); longer ones in array passes.
    few_up_to: ClassVar[int] = 64
    __slots__ = ("_entries", "_front", "_n", "_next", "_runs", "_seq", "_tail", "_tail_start")

    def __init__(self) -> None:
        self._seq = array("q")  # per block id: the sequence number of its live place, -1 when not held
        self._runs: deque[tuple[int, list[int] | npt.NDArray[np.int64]]] = deque()  # (first seq, block ids)
        self._front = 0  # places of the first run already consumed
        self._tail: list[int] = []  # single releases since the last run, in order (the queue's newest end)
        self._tail_start = 0  # the sequence number of the tail's first place
        self._next = 0  # the next sequence number
        self._n = 0  # blocks held
        self._entries = 0  # places in the queue, live and stale

    def __len__(self) -> int:
        return self._n

    def __contains__(self, block: int) -> bool:
        return 0 <= block < len(self._seq) and self._seq[block] >= 0

    def _grow(self, top: int) -> None:
        seq = self._seq
        if top >= len(seq):
            seq.extend(repeat(-1, max(top + 1 - len(seq), len(seq))))

    def _close_tail(self) -> None:
        if self._tail:
            self._runs.append((self._tail_start, self._tail))
            self._tail = []

    def add(self, block: int, block_hash: int, depth: int) -> None:
        seq = self._seq
        if block >= len(seq):
            self._grow(block)
        elif block < 0 or seq[block] >= 0:
            raise KeyError(block)
        tail = self._tail
        if not tail:
            self._tail_start = self._next
        seq[block] = self._next
        tail.append(block)
        self._next += 1
        self._n += 1
        self._entries += 1
        if self._entries > 2 * self._n + _SLACK:
            self._compact()

    def add_many(
        self, blocks: npt.NDArray[np.int64], block_hashes: Iterable[int], depths: npt.NDArray[np.int64]
    ) -> None:
        """:meth:`add` in bulk: the run becomes one place-holding entry at the newest end, in order."""
        m = len(blocks)
        if not m:
            return
        if int(blocks.min()) < 0:
            raise KeyError(int(blocks.min()))
        self._grow(int(blocks.max()))
        view = np.frombuffer(self._seq, dtype=np.int64)
        held = view[blocks] >= 0
        if bool(held.any()):
            del view
            raise KeyError(int(blocks[held][0]))
        view[blocks] = np.arange(self._next, self._next + m, dtype=np.int64)
        del view  # release the buffer export so that add() may grow the map
        self._close_tail()
        self._runs.append((self._next, blocks.copy()))
        self._next += m
        self._n += m
        self._entries += m
        if self._entries > 2 * self._n + _SLACK:
            self._compact()

    def remove(self, block: int) -> None:
        if block not in self:
            raise KeyError(block)
        self._seq[block] = -1
        self._n -= 1

    def remove_many(self, blocks: npt.NDArray[np.int64]) -> None:
        if not len(blocks):
            return
        view = np.frombuffer(self._seq, dtype=np.int64)
        ok = int(blocks.min()) >= 0 and int(blocks.max()) < len(view) and bool((view[blocks] >= 0).all())
        if ok:
            view[blocks] = -1  # a confirmed run holds each block once (its links chain back to the root)
        del view
        if not ok:
            raise KeyError(next(int(b) for b in blocks.tolist() if b not in self))
        self._n -= len(blocks)

    def hit_many(self, block_hashes: Iterable[int]) -> None:
        return None  # recency is set when a block is let go, not when it is matched

    def pop(self) -> int:
        seq = self._seq
        runs = self._runs
        while True:
            if not runs:
                self._close_tail()
            start, ids = runs[0]
            i = self._front
            n = len(ids)
            while i < n:
                block = int(ids[i])
                i += 1
                if seq[block] == start + i - 1:
                    seq[block] = -1
                    self._n -= 1
                    self._consumed(i, n)
                    return block
            self._consumed(n, n)

    def _consumed(self, upto: int, n: int) -> None:
        """The front run's places before ``upto`` are used (popped or stale)."""
        self._entries -= upto - self._front
        if upto == n:
            self._runs.popleft()
            self._front = 0
        else:
            self._front = upto

    def _live_places(
        self, start: int, ids: list[int] | npt.NDArray[np.int64], first: int, last: int | None = None
    ) -> npt.NDArray[np.int64]:
        """Indexes (from ``first``, before ``last``) of the places of a run that are still their block's live place."""
        end = len(ids) if last is None else last
        part = np.asarray(ids[first:end], dtype=np.int64)
        view = np.frombuffer(self._seq, dtype=np.int64)
        return np.flatnonzero(view[part] == np.arange(start + first, start + end, dtype=np.int64)) + first

    def pop_many(self, k: int) -> list[int]:
        if 0 < k <= self.few_up_to:
            return self._pop_few(k)
        out: list[int] = []
        while len(out) < k:
            if not self._runs:
                self._close_tail()
            start, run = self._runs[0]
            ids = run if isinstance(run, np.ndarray) else np.array(run, dtype=np.int64)
            if ids is not run:
                self._runs[0] = (start, ids)
            need = k - len(out)
            n = len(ids)
            # Look at the front of the run only, a window that doubles while stale places leave it short:
            # a 32-block eviction from a released 3,000-block run reads 32 places, not the whole run.
            window = need
            while True:
                end = min(n, self._front + window)
                live = self._live_places(start, ids, self._front, end)
                if len(live) >= need or end == n:
                    break
                window *= 2
            if len(live) > need or (len(live) == need and end < n):
                live = live[:need]
                upto = int(live[-1]) + 1
            else:
                upto = n
            taken = ids[live]
            np.frombuffer(self._seq, dtype=np.int64)[taken] = -1
            out += taken.tolist()
            self._consumed(upto, n)
        self._n -= k
        return out

    def _pop_few(self, k: int) -> list[int]:
        """:meth:`pop_many` of a few blocks: one Python pass over the front places, no arrays built.

        Takes the same blocks in the same order; it only leaves any stale
        places right after the last one taken for a later pop to skip.
        """
        seq = self._seq
        runs = self._runs
        out: list[int] = []
        while True:
            if not runs:
                self._close_tail()
            start, ids = runs[0]
            n = len(ids)
            i = self._front
            while i < n:
                part = ids[i : i + 2 * (k - len(out)) + 8]  # the window a few live places are likely in
                for block in part if isinstance(part, list) else part.tolist():
                    place = start + i
                    i += 1
                    if seq[block] == place:
                        seq[block] = -1
                        out.append(block)
                        if len(out) == k:
                            self._consumed(i, n)
                            self._n -= k
                            return out
            self._consumed(n, n)

    def hit(self, block_hash: int) -> None:
        return None

    def _each_live_run(self) -> Iterator[npt.NDArray[np.int64]]:
        """The live blocks of each run, front to back (the order they would be evicted in)."""
        runs = list(self._runs)
        if self._tail:
            runs.append((self._tail_start, self._tail))
        for j, (start, ids) in enumerate(runs):
            first = self._front if j == 0 and self._runs else 0
            yield np.asarray(ids, dtype=np.int64)[self._live_places(start, ids, first)]

    def order(self) -> list[int]:
        return [b for run in self._each_live_run() for b in run.tolist()]

    def peek(self, k: int) -> list[int]:
        out: list[int] = []
        for run in self._each_live_run():
            if len(out) >= k:
                break
            out += run[: k - len(out)].tolist()
        return out

    def _compact(self) -> None:
        """Rebuild the queue from its live places only (stale ones outnumbered them).

        The live places are joined as arrays, run by run, not through
        :meth:`order`'s Python list: in the coding-agent hour the queue holds
        some 15k blocks when it compacts, every ~20 finishes.
        """
        runs = list(self._each_live_run())
        live = np.concatenate(runs) if runs else np.empty(0, dtype=np.int64)
        self._runs.clear()
        self._tail = []
        self._front = 0
        if len(live):
            np.frombuffer(self._seq, dtype=np.int64)[live] = np.arange(self._next, self._next + len(live))
            self._runs.append((self._next, live))
            self._next += len(live)
        self._entries = len(live)

    def __repr__(self) -> str:
        return f"{self.name}{self.order()}"


class _ScoredEviction:
    """Lowest score first, ties oldest first; a heap with lazy deletion and dynamic ageing."""

    name = "scored"

    def __init__(self, max_tracked: int = 1 << 16) -> None:
        self._heap: list[tuple[float, int, int]] = []  # (score, tick, block); stale entries skipped
        self._live: dict[int, tuple[float, int]] = {}  # block -> its current (score, tick)
        self._hits: OrderedDict[int, int] = OrderedDict()  # content hash -> hits, oldest touched first
        self._max_tracked = max_tracked
        self._age = 0.0  # the score of the last evicted block (LFU-DA's "L")
        self._tick = 0

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, block: int) -> bool:
        return block in self._live

    def value(self, hits: int, depth: int) -> float:
        raise NotImplementedError

    def add(self, block: int, block_hash: int, depth: int) -> None:
        self._tick += 1
        entry = (self._age + self.value(self._hits.get(block_hash, 0), depth), self._tick)
        self._live[block] = entry
        heapq.heappush(self._heap, (entry[0], entry[1], block))
        if len(self._heap) > 4 * len(self._live) + 64:  # bound the stale entries: rebuild in O(n)
            self._heap = [(s, t, b) for b, (s, t) in self._live.items()]
            heapq.heapify(self._heap)

    def add_many(
        self, blocks: npt.NDArray[np.int64], block_hashes: Iterable[int], depths: npt.NDArray[np.int64]
    ) -> None:
        for block, block_hash, depth in zip(blocks.tolist(), block_hashes, depths.tolist(), strict=False):
            self.add(block, block_hash, depth)

    def remove(self, block: int) -> None:
        del self._live[block]  # its heap entry goes stale

    def remove_many(self, blocks: npt.NDArray[np.int64]) -> None:
        deque(map(self._live.pop, blocks.tolist()), maxlen=0)

    def hit_many(self, block_hashes: Iterable[int]) -> None:
        for h in block_hashes:
            self.hit(h)

    def pop(self) -> int:
        heap = self._heap
        live = self._live
        while True:
            score, tick, block = heapq.heappop(heap)
            if live.get(block) == (score, tick):
                del live[block]
                self._age = score
                return block

    def pop_many(self, k: int) -> list[int]:
        return [self.pop() for _ in range(k)]

    def hit(self, block_hash: int) -> None:
        hits = self._hits
        hits[block_hash] = hits.get(block_hash, 0) + 1
        hits.move_to_end(block_hash)
        if len(hits) > self._max_tracked:
            hits.popitem(last=False)

    def order(self) -> list[int]:
        return [b for _, _, b in sorted((s, t, b) for b, (s, t) in self._live.items())]

    def peek(self, k: int) -> list[int]:
        live = self._live
        out: list[int] = []
        for score, tick, block in heapq.nsmallest(k + len(self._heap) - len(live), self._heap):
            if live.get(block) == (score, tick):
                out.append(block)
                if len(out) == k:
                    break
        return out

    def __repr__(self) -> str:
        return f"{self.name}{sorted((s, t, b) for b, (s, t) in self._live.items())} age={self._age} hits={self._hits}"


class LFUEviction(_ScoredEviction):
    """Fewest hits first, aged (LFU-DA): score = hits + the score of the last block evicted."""

    name = "lfu"

    def value(self, hits: int, depth: int) -> float:
        return float(hits)


class CostAwareEviction(_ScoredEviction):
    """Cheapest to lose relative to reuse first: score = (hits + 1) / (depth + 1), aged like LFU."""

    name = "cost"

    def value(self, hits: int, depth: int) -> float:
        return (hits + 1) / (depth + 1)


class PinnedEviction:
    """Never evicts pinned content (up to ``cap`` pinned blocks held); the rest by ``inner``'s order."""

    name = "pinned"
    __slots__ = ("_cap", "_hash_of", "_inner", "_pinned", "_pinned_held")

    def __init__(self, inner: EvictionPolicy, cap: int) -> None:
        if cap < 0:
            raise ValueError(f"cap must be non-negative, got {cap}")
        self._inner = inner
        self._cap = cap
        self._pinned: set[int] = set()  # content hashes
        self._pinned_held: OrderedDict[int, int] = OrderedDict()  # block -> depth, pinned and evictable
        self._hash_of: dict[int, int] = {}

    def pin(self, block_hashes: list[int]) -> int:
        """Pin content, up to ``cap`` hashes in all (the rest are evicted normally); returns how many are new."""
        new = [h for h in block_hashes if h not in self._pinned][: max(0, self._cap - len(self._pinned))]
        self._pinned.update(new)
        return len(new)

    def __len__(self) -> int:
        return len(self._inner) + len(self._pinned_held)

    def __contains__(self, block: int) -> bool:
        return block in self._pinned_held or block in self._inner

    def add(self, block: int, block_hash: int, depth: int) -> None:
        if block_hash in self._pinned:
            self._pinned_held[block] = depth
            self._hash_of[block] = block_hash
        else:
            self._inner.add(block, block_hash, depth)

    def add_many(
        self, blocks: npt.NDArray[np.int64], block_hashes: Iterable[int], depths: npt.NDArray[np.int64]
    ) -> None:
        if not self._pinned:  # nothing is pinned: the inner policy takes them all, in bulk
            self._inner.add_many(blocks, block_hashes, depths)
            return
        for block, block_hash, depth in zip(blocks.tolist(), block_hashes, depths.tolist(), strict=False):
            self.add(block, block_hash, depth)

    def remove(self, block: int) -> None:
        if block in self._pinned_held:
            del self._pinned_held[block]
            del self._hash_of[block]
        else:
            self._inner.remove(block)

    def pop(self) -> int:
        if len(self._inner):
            return self._inner.pop()
        block, _ = self._pinned_held.popitem(last=False)  # only pinned content is left: the pool needs it
        del self._hash_of[block]
        return block

    def pop_many(self, k: int) -> list[int]:
        return [self.pop() for _ in range(k)]

    def hit(self, block_hash: int) -> None:
        self._inner.hit(block_hash)

    def remove_many(self, blocks: npt.NDArray[np.int64]) -> None:
        if not self._pinned_held:  # nothing pinned is evictable: the inner policy holds them all
            self._inner.remove_many(blocks)
            return
        for block in blocks.tolist():
            self.remove(block)

    def hit_many(self, block_hashes: Iterable[int]) -> None:
        self._inner.hit_many(block_hashes)

    def order(self) -> list[int]:
        return [*self._inner.order(), *self._pinned_held]

    def peek(self, k: int) -> list[int]:
        out = self._inner.peek(k)
        return out + list(itertools.islice(self._pinned_held, k - len(out)))

    def __repr__(self) -> str:
        return f"{self.name}({self._inner!r}, pinned={sorted(self._pinned)}, held={list(self._pinned_held)})"


EVICTION_POLICIES = ("lru", "lfu", "cost", "pinned")


def make_eviction(name: str, pinned_cap: int = 0) -> EvictionPolicy:
    """The policy named ``name`` (``pinned`` wraps LRU); raises ValueError naming the choices."""
    if name == "lru":
        return LRUEviction()
    if name == "lfu":
        return LFUEviction()
    if name == "cost":
        return CostAwareEviction()
    if name == "pinned":
        return PinnedEviction(LRUEviction(), pinned_cap)
    raise ValueError(f"unknown eviction policy {name!r}; choose one of {', '.join(EVICTION_POLICIES)}")
