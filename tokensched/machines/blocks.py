"""The KV-block ownership machine: a fixed pool of blocks and who may touch each.

States of one block (see ``specs/blocks.toml``)::

    FREE ──allocate──▶ OWNED ──commit──▶ COMMITTED ──release(last)──▶ EVICTABLE ──evict──▶ FREE
                         │                   ▲  │                        │
                         │                   └──┼────share (prefix hit)──┘
                         └──release──▶ FREE     └──release(last, in flight)──▶ PENDING ──step done──▶ EVICTABLE|FREE

- OWNED: being written by exactly one request (refcount 1).
- COMMITTED: full, content-hashed, read-only, shared by refcount.
- EVICTABLE: refcount 0 but still cached; evicted in the order of an
  :class:`~tokensched.machines.eviction.EvictionPolicy` (LRU by default, O(1)).
- PENDING: let go while a launched step may still read or write it. It cannot be
  handed out (nor matched as a prefix) until that step completes, which is what
  makes overlap scheduling safe.

Every operation validates fully before it changes anything, so a refused call
leaves the pool exactly as it was. Hot operations are O(1) per block.

Hash to find, compare to confirm: the prefix index maps a chained block hash
(:mod:`tokensched.machines.prefix`) to a candidate block, and a candidate is
shared only if it holds exactly the request's tokens for that block *and* was
computed right after the block the match took for the previous position (its
*link*: that block's id and allocation generation, or for a first block the
request's ``cache_salt``). Committed tokens live in one pool-wide int32 array
(``block_size * 4`` bytes a block), so :meth:`BlockPool.match_prefix` confirms
a whole run of candidates in one vectorised compare. By induction a confirmed
run holds exactly the request's prefix, whatever the hashes do: a collision
costs a miss, never another prefix's KV.

KV events: a :class:`BlockPoolListener` passed as ``listener`` hears
``blocks_stored`` when blocks become findable by prefix (commit of the first
copy of some content), ``blocks_removed`` when they stop being findable
(eviction, :meth:`BlockPool.clear_cache`) and ``all_cleared`` when the index
empties through :meth:`BlockPool.clear_cache`. With no listener (the default)
nothing is built for it. More than one party may listen (a KV-event publisher
and the scheduler's prefix-keyed queue): :meth:`BlockPool.add_listener` puts a
:class:`ListenerFanOut` in the one slot, so the hot path still tests a single
attribute.
"""

from __future__ import annotations

from array import array
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from enum import IntEnum
from itertools import repeat
from typing import ClassVar, Protocol, cast

import numpy as np
import numpy.typing as npt

from tokensched.errors import CapacityError, IllegalTransition, InvariantViolation
from tokensched.int_column import IntColumn
from tokensched.machines.eviction import EvictionPolicy, LRUEviction

NO_RUN: npt.NDArray[np.int64] = np.zeros(0, dtype=np.int64)
NO_RUN.flags.writeable = False


def _int64s(n: int, value: int) -> array[int]:
    """``n`` int64 counters set to ``value``: list-speed scalar access, and a numpy view for runs."""
    return array("q", bytes(8 * n)) if value == 0 else array("q", [value]) * n


def _ints(counters: array[int]) -> npt.NDArray[np.int64]:
    """A numpy view of an ``array('q')`` of per-block counters (writes go through to it)."""
    return np.frombuffer(counters, dtype=np.int64)


def _count_into(counters: array[int], lo: int, hi: int, first: int, step: int) -> None:
    """Write ``first, first + step, ...`` into ``counters[lo:hi]``: from a range for a chunk, through numpy for more."""
    n = hi - lo
    if n <= 64:  # an array built from a short range costs less than a numpy view and an arange
        counters[lo:hi] = array("q", range(first, first + step * n, step))
    else:  # a long run (a 200k-token prompt is 3,125 blocks of 64): the range's ints would cost more
        _ints(counters)[lo:hi] = np.arange(first, first + step * n, step, dtype=np.int64)


def _flags(flags: bytearray) -> npt.NDArray[np.bool_]:
    """A numpy view of a ``bytearray`` of per-block flags (writes go through to it)."""
    return np.frombuffer(flags, dtype=np.bool_)


class BlockState(IntEnum):
    FREE = 0
    OWNED = 1
    COMMITTED = 2
    EVICTABLE = 3
    PENDING = 4


_FREE = BlockState.FREE.value
_OWNED = BlockState.OWNED.value
_COMMITTED = BlockState.COMMITTED.value
_EVICTABLE = BlockState.EVICTABLE.value
_PENDING = BlockState.PENDING.value
_OWNED_BYTE = bytes((_OWNED,))
_COMMITTED_BYTE = bytes((_COMMITTED,))
_INDEXED_BYTE = b"\x01"
_ONE = array("q", [1])


class BlockPoolListener(Protocol):
    """Hears the prefix index change (for a KV-events publisher, e.g. a cache-aware router).

    ``blocks_stored``: blocks ``block_hashes`` (a chain, in order) became
    findable; ``parent_block_hash`` is the hash of the block before the first
    one, or None when the first one starts its request's prompt; ``token_ids``
    holds ``block_size`` tokens per block (for a long run an
    :class:`~tokensched.int_column.IntColumn`, which builds its list only when
    read, so a listener that ignores the tokens, like the PrefixAware queue's,
    costs no 200k-item list). ``blocks_removed``: those hashes are
    no longer findable. ``all_cleared``: nothing is findable any more.
    """

    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None: ...

    def blocks_removed(self, block_hashes: list[int]) -> None: ...

    def all_cleared(self) -> None: ...


class ListenerFanOut:
    """Several listeners in the pool's one slot: each event goes to each of them, in the order they were added."""

    __slots__ = ("listeners",)

    def __init__(self, listeners: Sequence[BlockPoolListener]) -> None:
        self.listeners = tuple(listeners)

    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None:
        for listener in self.listeners:
            listener.blocks_stored(block_hashes, parent_block_hash, token_ids, block_size)

    def blocks_removed(self, block_hashes: list[int]) -> None:
        for listener in self.listeners:
            listener.blocks_removed(block_hashes)

    def all_cleared(self) -> None:
        for listener in self.listeners:
            listener.all_cleared()


class BlockPool:
    """``num_blocks`` KV blocks, their states, refcounts and the prefix index.

    The prefix index maps a block's chained content hash to the block that
    holds that content; it covers COMMITTED, EVICTABLE and PENDING blocks and
    is pruned when a block is evicted.
    """

    #: From this many blocks a release, or a pending batch settling, goes through the vectorised path
    #: (same outcome); below it a few scalar steps a block cost less than a dozen numpy calls.
    bulk_from: ClassVar[int] = 16
    #: Whether long allocations and commits take the lean paths (off: always the index arrays and C-level maps,
    #: the reference the tests compare with): blocks that are one range of ids (most prefill chunks: the free
    #: list hands out ascending ids, an eviction a released run's descending ones) are written as slices, and
    #: an eviction of up to :attr:`loop_up_to` blocks leaves the index in one Python loop.
    lean_paths: ClassVar[bool] = True
    loop_up_to: ClassVar[int] = 64

    __slots__ = (
        "_canon",
        "_canon_gen",
        "_completed",
        "_depth",
        "_evict",
        "_free",
        "_gen",
        "_hash",
        "_held_for",
        "_index",
        "_indexed",
        "_link",
        "_link_gen",
        "_pending",
        "_refcount",
        "_roots",
        "_slot",
        "_state",
        "_tokens",
        "block_size",
        "listener",
        "num_blocks",
    )

    def __init__(
        self,
        num_blocks: int,
        block_size: int = 16,
        listener: BlockPoolListener | None = None,
        eviction: EvictionPolicy | None = None,
    ) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be at least 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.listener = listener
        self._tokens = np.zeros((num_blocks, block_size), dtype=np.int32)  # what each committed block holds
        # Link of a committed block: the block it was computed after (negative: a salt root) and that
        # block's generation then. A generation is bumped whenever a block is handed out anew.
        self._link = _int64s(num_blocks, 0)
        self._link_gen = _int64s(num_blocks, 0)
        self._gen = _int64s(num_blocks, 0)
        # Canonical copy of a committed block's content (itself when it is the indexed copy); its
        # successors link to that copy, so they stay findable after a duplicate is freed.
        self._canon = _int64s(num_blocks, 0)
        self._canon_gen = _int64s(num_blocks, 0)
        self._roots: dict[str | None, int] = {None: -1}
        self._state = bytearray(num_blocks)  # all FREE
        # Per-block counters live in flat C arrays (``array('q')``, ``bytearray``): one block is a
        # list-speed index that yields a Python int, and a run of blocks (a 200k-token request is 12.5k
        # of them) is released, settled or shared in a few vectorised passes over a numpy view of the
        # same memory (see _ints / _flags; views are made per use, so pickles and copies stay whole).
        self._refcount = _int64s(num_blocks, 0)
        self._hash: list[int | None] = [None] * num_blocks
        # Pop from the end: block 0 is handed out first, which keeps tests readable.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evict: EvictionPolicy = eviction if eviction is not None else LRUEviction()
        self._depth = _int64s(num_blocks, 0)  # place in its hash chain (for cost-aware eviction)
        # Whether a block is the indexed copy of its content (the index maps its hash to it): what decides,
        # without a dict look-up, if a block nobody holds stays cached (EVICTABLE) or goes FREE.
        self._indexed = bytearray(num_blocks)
        self._slot = np.zeros(num_blocks, dtype=np.int64)  # scratch: finds a block given twice in a release
        self._pending: deque[tuple[int, list[int]]] = deque()
        # The newest step in flight that a releaser of each block was in: a shared block let go by a
        # request in flight and last by one that is not stays PENDING until that step completes.
        self._held_for = _int64s(num_blocks, -1)
        self._completed = -1  # the newest step completed (steps complete in order)
        self._index: dict[int, int] = {}

    # --------------------------------------------------------------- listeners
    def add_listener(self, listener: BlockPoolListener) -> None:
        """Let ``listener`` hear the prefix index change too, after whoever listens already."""
        current = self.listener
        if current is None:
            self.listener = listener
        elif isinstance(current, ListenerFanOut):
            self.listener = ListenerFanOut((*current.listeners, listener))
        else:
            self.listener = ListenerFanOut((current, listener))

    def remove_listener(self, listener: BlockPoolListener) -> None:
        """Stop ``listener`` hearing the index (raises ValueError if it does not listen)."""
        current = self.listener
        if current is listener:
            self.listener = None
            return
        if isinstance(current, ListenerFanOut) and any(x is listener for x in current.listeners):
            rest = [x for x in current.listeners if x is not listener]
            self.listener = rest[0] if len(rest) == 1 else ListenerFanOut(rest)
            return
        raise ValueError("that listener does not listen to this pool")

    # ------------------------------------------------------------------ queries
    def _states(self) -> npt.NDArray[np.uint8]:
        """The block states as a numpy view, for vectorised reads and writes.

        Made on each use rather than kept: a kept view would stop aliasing the
        bytes after a pickle or deep copy of the pool (the exhaustive check
        copies whole schedulers that way).
        """
        return np.frombuffer(self._state, dtype=np.uint8)

    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free or evictable)."""
        return len(self._free) + len(self._evict)

    @property
    def eviction(self) -> EvictionPolicy:
        """The order EVICTABLE blocks are evicted in."""
        return self._evict

    @property
    def num_evictable(self) -> int:
        """Cached blocks held by nobody (counted in :attr:`num_free`)."""
        return len(self._evict)

    @property
    def num_pending(self) -> int:
        return sum(len(blocks) for _, blocks in self._pending)

    def state(self, block: int) -> BlockState:
        return BlockState(self._state[block])

    def refcount(self, block: int) -> int:
        return self._refcount[block]

    def block_hash(self, block: int) -> int | None:
        return self._hash[block]

    def content(self, block: int) -> tuple[int, int, npt.NDArray[np.int32]]:
        """A cached block's chained hash, depth in its chain and tokens (a copy), for the host tier.

        Raises IllegalTransition unless the block is COMMITTED or EVICTABLE.
        """
        h = self._hash[block]
        if h is None or self._state[block] not in (_COMMITTED, _EVICTABLE):
            raise IllegalTransition(f"block {block}", self.state(block).name, "content")
        return h, self._depth[block], self._tokens[block].copy()

    def counts(self) -> dict[BlockState, int]:
        counts = dict.fromkeys(BlockState, 0)
        for s in self._state:
            counts[BlockState(s)] += 1
        return counts

    def cached_block(self, block_hash: int) -> int | None:
        """The block holding content ``block_hash`` if it can be shared now."""
        block = self._index.get(block_hash)
        if block is None:
            return None
        s = self._state[block]
        return block if s in (_COMMITTED, _EVICTABLE) else None

    def indexed(self, block_hash: int) -> bool:
        """Whether the prefix index holds content ``block_hash`` (shareable now, or once the step in flight is done).

        Unlike :meth:`cached_block` this counts a PENDING block: it becomes
        EVICTABLE when its step completes, and only the listener's events
        (``blocks_stored`` / ``blocks_removed`` / ``all_cleared``) change the
        answer, which is what lets a listener keep it up to date.
        """
        return block_hash in self._index

    def indexed_run(self, hashes: Sequence[int], start: int = 0) -> int:
        """The end of the run of ``hashes`` from ``start`` that the index holds (``start`` if it holds none).

        C-level look-ups in chunks that double, so a short run costs little
        and a 12k-block one a few passes.
        """
        index = self._index
        end = len(hashes)
        pos = start
        chunk = 16
        while pos < end:
            part = hashes[pos : pos + chunk]
            held = list(map(index.__contains__, part))
            if not all(held):
                return pos + held.index(False)
            pos += len(part)
            chunk *= 2
        return end

    def root(self, salt: str | None) -> int:
        """The link of a request's first block: one negative id per ``cache_salt`` (None included)."""
        root = self._roots.get(salt)
        if root is None:
            root = self._roots[salt] = -1 - len(self._roots)
        return root

    def match_prefix(
        self, hashes: Sequence[int], tokens: Sequence[int] | npt.NDArray[np.int32], root: int
    ) -> list[int]:
        """Longest confirmed run of shareable blocks for a chain of block hashes (no state change).

        ``tokens`` are the request's tokens (at least ``len(hashes)`` full
        blocks) and ``root`` is :meth:`root` of its ``cache_salt``; see
        :meth:`match_run`, which returns the same run as an array.
        """
        return self.match_run(hashes, tokens, root).tolist()  # type: ignore[no-any-return]

    def match_run(
        self, hashes: Sequence[int], tokens: Sequence[int] | npt.NDArray[np.int32], root: int
    ) -> npt.NDArray[np.int64]:
        """:meth:`match_prefix` as an int64 array of block ids, for :meth:`share` and :meth:`count_evictable`.

        The index proposes candidates (one C-level ``map`` of ``dict.get``: a
        200k-token prompt is 12.5k look-ups); one vectorised read of their
        states and one compare of their tokens and links then keep the leading
        run that truly holds this prefix.
        """
        return self._match(hashes, tokens, root, 0)

    def _match(
        self, hashes: Sequence[int], tokens: Sequence[int] | npt.NDArray[np.int32], root: int, root_gen: int
    ) -> npt.NDArray[np.int64]:
        # The leading hits only: the callable iterator stops at the first miss (None), so a prompt whose
        # cached run ends early is not looked up past it (thousands of cache-missing dict probes).
        found: list[int] = list(iter(map(self._index.get, hashes).__next__, None))
        if not found:
            return NO_RUN
        candidates = np.fromiter(found, dtype=np.int64, count=len(found))
        states = self._states()[candidates]
        if int(states.min()) < _COMMITTED or int(states.max()) > _EVICTABLE:  # COMMITTED and EVICTABLE are adjacent
            candidates = candidates[: int(np.argmin((states >= _COMMITTED) & (states <= _EVICTABLE)))]
            if not len(candidates):
                return NO_RUN
        return candidates[: self.confirmed_run(candidates, tokens, root, root_gen)]

    def confirmed_run(
        self,
        candidates: npt.NDArray[np.int64],
        tokens: Sequence[int] | npt.NDArray[np.int32],
        root: int,
        root_gen: int = 0,
    ) -> int:
        """How many leading ``candidates`` hold the request's blocks, each linked to the one before.

        ``root`` is what the first candidate must follow: a salt root, or a
        block whose generation is ``root_gen``. One gather and compare of all
        the candidates' tokens (rows of the pool-wide token array) and links.
        """
        m = len(candidates)
        bs = self.block_size
        want = np.asarray(tokens[: m * bs], dtype=np.int32).reshape(m, bs)
        got = self._tokens[candidates]
        # the common case is one flat compare, with no per-row reduction
        ok = np.ones(m, dtype=np.bool_) if np.array_equal(got, want) else (got == want).all(axis=1)
        before = np.empty(m, dtype=np.int64)
        before[0] = root
        before[1:] = candidates[:-1]
        before_gen = np.empty(m, dtype=np.int64)
        before_gen[0] = root_gen
        before_gen[1:] = _ints(self._gen)[candidates[:-1]]
        ok &= _ints(self._link)[candidates] == before
        ok &= _ints(self._link_gen)[candidates] == before_gen
        return m if bool(ok.all()) else int(np.argmin(ok))

    def generations(self, blocks: Sequence[int] | npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The blocks' allocation generations now: a block whose generation is unchanged still holds what it held."""
        return _ints(self._gen)[np.asarray(blocks, dtype=np.int64)]

    def still_cached_run(self, blocks: npt.NDArray[np.int64], generations: npt.NDArray[np.int64]) -> int:
        """How many leading ``blocks`` are shareable and not handed out since they had ``generations``.

        What a session's next turn uses instead of :meth:`match_run` for the
        part of its prompt that repeats the previous turn (checked equal to it
        in one memory compare): a block keeps its tokens and its link to the
        block before it until it is handed out anew, which bumps its
        generation, so a run of unchanged, still cached blocks of the previous
        turn's table is confirmed without hashing or comparing a token.
        """
        if not len(blocks):
            return 0
        states = self._states()[blocks]
        ok = (states >= _COMMITTED) & (states <= _EVICTABLE) & (_ints(self._gen)[blocks] == generations)
        return len(blocks) if bool(ok.all()) else int(np.argmin(ok))

    def match_run_after(
        self, hashes: Sequence[int], tokens: Sequence[int] | npt.NDArray[np.int32], after: int
    ) -> npt.NDArray[np.int64]:
        """:meth:`match_run` for the blocks that follow block ``after`` (a confirmed block) in a request."""
        return self._match(hashes, tokens, self._canon[after], self._canon_gen[after])

    def cached_prefix_length(self, hashes: Sequence[int], *, held: bool = False) -> int:
        """How many leading blocks of a hash chain are cached (and, with ``held``, also referenced).

        A binary search: O(log n) look-ups instead of :meth:`match_prefix`'s walk.
        It assumes the blocks in question form a prefix of the chain, which holds
        (almost always) because requests release their blocks tail first; use it
        for estimates, and :meth:`match_prefix` where exactness matters.
        """
        index = self._index
        state = self._state
        refcount = self._refcount
        lo, hi = 0, len(hashes)
        while lo < hi:  # each probe is :meth:`cached_block` inline (retention asks twice per session per look)
            mid = (lo + hi + 1) // 2
            block = index.get(hashes[mid - 1])
            if block is not None and _COMMITTED <= state[block] <= _EVICTABLE and (not held or refcount[block] > 0):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def count_evictable(self, blocks: Sequence[int] | npt.NDArray[np.int64]) -> int:
        """How many of ``blocks`` are EVICTABLE (sharing them takes them out of the free count)."""
        if not len(blocks):
            return 0
        if len(blocks) == 1:
            return int(self._state[int(blocks[0])] == _EVICTABLE)
        return int(np.count_nonzero(self._states()[np.asarray(blocks, dtype=np.int64)] == _EVICTABLE))

    # ------------------------------------------------------------- transitions
    def allocate(self, n: int) -> list[int]:
        """Hand out ``n`` blocks as OWNED (refcount 1), evicting LRU cached blocks if needed.

        Free blocks go first (the newest freed first), then evicted ones in
        the eviction policy's order; a long eviction (:attr:`bulk_from` or
        more) takes its victims in one :meth:`EvictionPolicy.pop_many` and
        drops them from the index in C-level passes, and a long allocation
        marks its blocks in vectorised passes (a short one block by block);
        blocks that fill one range of ids (a prefill chunk, mostly) are
        written as slices, which costs less than an index array for the
        chunk sizes of a DP rank (24-40 blocks).
        """
        if n > len(self._free) + len(self._evict):
            raise CapacityError(f"asked for {n} blocks, {self.num_free} can be handed out")
        if n <= 0:
            return []
        free = self._free
        taken = min(n, len(free))
        out: list[int] = free[len(free) - taken :]
        out.reverse()  # popped from the end, one by one
        del free[len(free) - taken :]
        removed: list[int] | None = [] if self.listener is not None else None
        if n - taken >= self.bulk_from:
            out += self._evict_many(n - taken, removed)
        else:
            for _ in range(n - taken):
                block = self._evict.pop()
                self._unindex(block, removed)
                out.append(block)
        if n < self.bulk_from:  # a few blocks: scalar writes cost less than building an array and three passes
            state = self._state
            refcount = self._refcount
            gen = self._gen
            for block in out:
                state[block] = _OWNED
                refcount[block] = 1
                gen[block] += 1
        elif (span := self._span(out)) is not None:  # one range of ids (mostly): slices, no index array
            lo, hi = span
            self._state[lo:hi] = _OWNED_BYTE * n
            self._refcount[lo:hi] = _ONE * n
            _ints(self._gen)[lo:hi] += 1  # whatever linked to these blocks' old content no longer matches
        else:
            ids = np.array(out, dtype=np.int64)
            self._states()[ids] = _OWNED
            _ints(self._refcount)[ids] = 1
            _ints(self._gen)[ids] += 1
        if removed and self.listener is not None:
            self.listener.blocks_removed(removed)
        return out

    def _evict_many(self, k: int, removed: list[int] | None) -> list[int]:
        """Take ``k`` blocks in the eviction order out of the index (their hashes join ``removed``) and return them.

        An evictable block is its content's indexed copy, so each victim's
        hash leaves the index. A prefill chunk's few victims go in one Python
        loop (cheaper than a C-level map a field and an index array); more go
        in C-level passes, their flags as slices when they fill one range.
        """
        victims = self._evict.pop_many(k)
        hash_of = self._hash
        if self.lean_paths and k <= self.loop_up_to:
            index = self._index
            indexed = self._indexed
            hashes: list[int] = []
            for block in victims:
                h = hash_of[block]  # evictable: hashed, its content's indexed copy
                del index[h]  # type: ignore[arg-type]
                hash_of[block] = None
                indexed[block] = False
                hashes.append(h)  # type: ignore[arg-type]
        else:
            hashes = cast("list[int]", list(map(hash_of.__getitem__, victims)))
            deque(map(self._index.__delitem__, hashes), maxlen=0)
            span = self._span(victims)
            if span is None:
                deque(map(hash_of.__setitem__, victims, repeat(None)), maxlen=0)
                _flags(self._indexed)[victims] = False
            else:
                lo, hi = span
                hash_of[lo:hi] = [None] * (hi - lo)
                self._indexed[lo:hi] = bytes(hi - lo)
        if removed is not None:
            removed += hashes
        return victims

    def _span(self, blocks: list[int]) -> tuple[int, int] | None:
        """``(lo, hi)`` if ``blocks`` (distinct ids, as the pool hands them out) are exactly ``lo .. hi-1``, any order.

        Distinct ids whose extremes are ``len - 1`` apart fill that range, so
        two C-level passes decide it. Only for writes that treat every block
        alike (the order of ``blocks`` is lost).
        """
        if not self.lean_paths:
            return None
        lo = min(blocks)
        hi = max(blocks) + 1
        return (lo, hi) if hi - lo == len(blocks) else None

    def allocate_one(self) -> int:
        """The common case of :meth:`allocate`, without the list."""
        if self._free:
            block = self._free.pop()
        elif len(self._evict):
            block = self._evict.pop()
            if self.listener is not None:
                removed: list[int] = []
                self._unindex(block, removed)
                if removed:
                    self.listener.blocks_removed(removed)
            else:
                self._unindex(block, None)
        else:
            raise CapacityError("no block can be handed out")
        self._state[block] = _OWNED
        self._refcount[block] = 1
        self._gen[block] += 1
        return block

    def commit(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        tokens: Sequence[int] | npt.NDArray[np.int32],
        after: int,
        first_depth: int = 0,
    ) -> None:
        """Full OWNED ``blocks`` (consecutive in one request) become COMMITTED; new content is indexed.

        ``hashes`` are their chained hashes, ``tokens`` their ``block_size``
        tokens each, and ``after`` the block the first one follows in the
        request's table (or :meth:`root` of its salt when it is the request's
        first block); ``first_depth`` is the first one's place in the chain
        (for cost-aware eviction). A block whose content the index confirms it
        holds already stays an unindexed duplicate, freed when its holders let go.

        One block (a decode crossing its block edge: most commits) takes
        :meth:`_commit_one`, scalar steps with no array built; longer runs
        :meth:`_commit_run`. Both end in the same state and events.
        """
        if len(blocks) == 1:
            self._commit_one(blocks[0], hashes, tokens, after, first_depth)
        elif (
            len(blocks) >= self.bulk_from
            and self.lean_paths
            and type(blocks) is list
            and abs(blocks[-1] - blocks[0]) == len(blocks) - 1
        ):
            self._commit_range(blocks, hashes, tokens, after, first_depth)
        else:
            self._commit_run(blocks, hashes, tokens, after, first_depth)

    def _commit_range(
        self,
        blocks: list[int],
        hashes: Sequence[int],
        tokens: Sequence[int] | npt.NDArray[np.int32],
        after: int,
        first_depth: int,
    ) -> None:
        """:meth:`_commit_run` of blocks that may be one run of consecutive ids, ascending or descending.

        A prefill chunk's blocks mostly are (the free list hands out ascending
        ids, an eviction a released run's descending ones): every per-block
        array is then written through one slice (a view) instead of gathered
        and scattered through an index array. Anything else, a refusal
        included, goes to :meth:`_commit_run`, which names the fault.
        """
        n = len(blocks)
        b0 = blocks[0]
        step = 1 if blocks[-1] > b0 else -1
        order = list(range(b0, b0 + step * n, step))
        bs = self.block_size
        if blocks != order or len(hashes) != n or len(tokens) != n * bs:
            self._commit_run(blocks, hashes, tokens, after, first_depth)
            return
        lo = b0 if step > 0 else b0 - n + 1
        if self._state[lo : lo + n].count(_OWNED) != n or not -len(self._roots) <= after < self.num_blocks:
            self._commit_run(blocks, hashes, tokens, after, first_depth)
            return
        hi = lo + n
        values = np.asarray(tokens, dtype=np.int32).reshape(n, bs)
        if after < 0:
            link, link_gen, parent_hash = after, 0, None
        else:
            link, link_gen, parent_hash = self._canon[after], self._canon_gen[after], self._hash[after]
        # Written in the order of the ids (lo .. hi-1); a descending run's per-block values are reversed.
        self._tokens[lo:hi] = values if step > 0 else values[::-1]
        _count_into(self._depth, lo, hi, first_depth if step > 0 else first_depth + n - 1, step)
        twins = list(map(self._index.setdefault, hashes, order))
        if twins != order:  # not all new: the general loop, as _commit_run goes on
            self._commit_loop(blocks, hashes, values, link, link_gen, parent_hash, twins)
            return
        # Every block its own canonical copy, linked to the one before it in the run (_commit_new as slices).
        self._state[lo:hi] = _COMMITTED_BYTE * n
        self._hash[lo:hi] = hashes if step > 0 else hashes[::-1]
        gen = self._gen
        if step > 0:  # block lo + i follows lo + i - 1
            self._link[lo] = link
            _count_into(self._link, lo + 1, hi, lo, 1)
            self._link_gen[lo] = link_gen
            self._link_gen[lo + 1 : hi] = gen[lo : hi - 1]
        else:  # block hi - 1 - i follows hi - i
            self._link[hi - 1] = link
            _count_into(self._link, lo, hi - 1, lo + 1, 1)
            self._link_gen[hi - 1] = link_gen
            self._link_gen[lo : hi - 1] = gen[lo + 1 : hi]
        self._indexed[lo:hi] = _INDEXED_BYTE * n
        _count_into(self._canon, lo, hi, lo, 1)
        self._canon_gen[lo:hi] = gen[lo:hi]
        if self.listener is not None:
            self._announce(blocks, hashes, values, None, parent_hash)

    def _commit_one(
        self,
        block: int,
        hashes: Sequence[int],
        tokens: Sequence[int] | npt.NDArray[np.int32],
        after: int,
        first_depth: int,
    ) -> None:
        """:meth:`commit` of one block: the same checks, in the same order, and the same outcome as the run's loop."""
        bs = self.block_size
        if len(hashes) != 1 or len(tokens) != bs:
            raise ValueError(f"commit of 1 blocks needs 1 hashes and {bs} tokens")
        state = self._state
        if state[block] != _OWNED:
            raise IllegalTransition(f"block {block}", self.state(block).name, "commit")
        if not -len(self._roots) <= after < self.num_blocks:
            raise ValueError(f"commit after unknown block or salt root {after}")
        if after < 0:
            link, link_gen, parent_hash = after, 0, None
        else:
            link, link_gen, parent_hash = self._canon[after], self._canon_gen[after], self._hash[after]
        row = self._tokens[block]
        row[:] = tokens
        self._depth[block] = first_depth
        h = hashes[0]
        state[block] = _COMMITTED
        self._hash[block] = h
        self._link[block] = link
        self._link_gen[block] = link_gen
        index = self._index
        twin = index.get(h)
        if twin is None:
            index[h] = block
            self._indexed[block] = True
            canon = block
        elif self._link[twin] == link and self._link_gen[twin] == link_gen and np.array_equal(self._tokens[twin], row):
            canon = twin  # the same content after the same prefix: successors link to the indexed copy
        else:
            canon = block  # a hash collision: this copy stays unfindable, and so do its successors
        self._canon[block] = canon
        self._canon_gen[block] = int(self._gen[canon])
        if twin is None and self.listener is not None:
            self._announce_run(hashes, self._tokens[block : block + 1], 0, 1, parent_hash)

    def _commit_run(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        tokens: Sequence[int] | npt.NDArray[np.int32],
        after: int,
        first_depth: int,
    ) -> None:
        """:meth:`commit` of any number of blocks (the general path; one block here ends as :meth:`_commit_one`)."""
        n = len(blocks)
        bs = self.block_size
        if len(hashes) != n or len(tokens) != n * bs:
            raise ValueError(f"commit of {n} blocks needs {n} hashes and {n * bs} tokens")
        bulk = n >= self.bulk_from
        ids = np.array(blocks, dtype=np.int64) if bulk else NO_RUN
        if bulk:  # one vectorised state check; the first block in order that is not OWNED is named
            owned = self._states()[ids] == _OWNED
            if not bool(owned.all()):
                bad = int(ids[int(np.argmin(owned))])
                raise IllegalTransition(f"block {bad}", self.state(bad).name, "commit")
        else:
            for block in blocks:
                if self._state[block] != _OWNED:
                    raise IllegalTransition(f"block {block}", self.state(block).name, "commit")
        if not -len(self._roots) <= after < self.num_blocks:
            raise ValueError(f"commit after unknown block or salt root {after}")
        values = np.asarray(tokens, dtype=np.int32).reshape(n, bs)
        if after < 0:
            link, link_gen, parent_hash = after, 0, None
        else:
            link, link_gen, parent_hash = self._canon[after], self._canon_gen[after], self._hash[after]
        index = self._index
        twins: list[int] | None = None  # with distinct blocks: what the index holds for each hash once it is in
        if not bulk:
            self._tokens[list(blocks)] = values
            depth = self._depth
            for i, block in enumerate(blocks):
                depth[block] = first_depth + i
        else:
            self._tokens[ids] = values
            _ints(self._depth)[ids] = np.arange(first_depth, first_depth + n)
            if self._distinct(ids, blocks):
                # One C-level pass both finds and indexes: ``setdefault`` in chain order does what the loop
                # below does hash by hash (index a new hash; a hash already there, or repeated earlier in
                # this run, is a twin), and an OWNED block is never an index value, so a block that comes
                # back as its own twin was indexed just now.
                block_list: list[int] = ids.tolist()
                twins = list(map(index.setdefault, hashes, block_list))
                if twins == block_list:  # all new (the common prefill chunk): every block its own canonical copy
                    self._commit_new(ids, block_list, hashes, link, link_gen)
                    if self.listener is not None:
                        self._announce(blocks, hashes, values, None, parent_hash)
                    return
        self._commit_loop(blocks, hashes, values, link, link_gen, parent_hash, twins)

    def _commit_loop(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        values: npt.NDArray[np.int32],
        link: int,
        link_gen: int,
        parent_hash: int | None,
        twins: list[int] | None,
    ) -> None:
        """The block-by-block end of a commit whose tokens and depths are written (``twins``: as in _commit_run)."""
        index = self._index
        gen = self._gen
        stored: list[int] = []  # position in the run of each newly indexed block, for the listener
        for i, (block, h) in enumerate(zip(blocks, hashes, strict=True)):
            self._state[block] = _COMMITTED
            self._hash[block] = h
            self._link[block] = link
            self._link_gen[block] = link_gen
            if twins is None:
                twin = index.get(h)
                if twin is None:
                    index[h] = block
            else:
                twin = twins[i]
            if twin is None or (twins is not None and twin == block):
                self._indexed[block] = True
                canon = block
                stored.append(i)
            elif (
                self._link[twin] == link
                and self._link_gen[twin] == link_gen
                and np.array_equal(self._tokens[twin], values[i])
            ):
                canon = twin  # the same content after the same prefix: successors link to the indexed copy
            else:
                canon = block  # a hash collision: this copy stays unfindable, and so do its successors
            link = self._canon[block] = canon
            link_gen = self._canon_gen[block] = int(gen[canon])
        if stored and self.listener is not None:
            self._announce(blocks, hashes, values, stored, parent_hash)

    def _commit_new(
        self, ids: npt.NDArray[np.int64], block_list: list[int], hashes: Sequence[int], link: int, link_gen: int
    ) -> None:
        """:meth:`commit`'s loop for a run whose every block was just indexed as the copy of its (new) content."""
        n = len(ids)
        gen = _ints(self._gen)
        self._states()[ids] = _COMMITTED
        deque(map(self._hash.__setitem__, block_list, hashes), maxlen=0)
        links = np.empty(n, dtype=np.int64)
        links[0] = link
        links[1:] = ids[:-1]
        link_gens = np.empty(n, dtype=np.int64)
        link_gens[0] = link_gen
        link_gens[1:] = gen[ids[:-1]]
        _ints(self._link)[ids] = links
        _ints(self._link_gen)[ids] = link_gens
        _flags(self._indexed)[ids] = True
        _ints(self._canon)[ids] = ids
        _ints(self._canon_gen)[ids] = gen[ids]

    def commit_each(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        tokens: npt.NDArray[np.int32],
        afters: Sequence[int],
        depths: Sequence[int],
    ) -> None:
        """Commit one block each for several requests (a decode step filling blocks), in one batch.

        Block ``blocks[i]`` holds ``tokens[i]`` (shape ``(len(blocks),
        block_size)``) under ``hashes[i]`` and follows ``afters[i]``; the same
        as :meth:`commit` once per block, in order, with one token write.
        """
        n = len(blocks)
        if len(hashes) != n or len(afters) != n or len(depths) != n or tokens.shape != (n, self.block_size):
            raise ValueError(f"commit of {n} blocks needs {n} hashes, {n} predecessors and ({n}, block_size) tokens")
        state = self._state
        lowest = -len(self._roots)
        for block, after in zip(blocks, afters, strict=True):
            if state[block] != _OWNED:
                raise IllegalTransition(f"block {block}", self.state(block).name, "commit")
            if not lowest <= after < self.num_blocks:
                raise ValueError(f"commit after unknown block or salt root {after}")
        if len(set(blocks)) != n:
            raise ValueError("a block committed twice in one batch")
        self._tokens[blocks] = tokens
        index = self._index
        canon_of = self._canon
        canon_gen = self._canon_gen
        link_of = self._link
        link_gen_of = self._link_gen
        hash_of = self._hash
        gen = self._gen
        listener = self.listener
        depth_of = self._depth
        for block, depth in zip(blocks, depths, strict=True):
            depth_of[block] = depth
        indexed = self._indexed
        for i, block in enumerate(blocks):
            h = hashes[i]
            after = afters[i]
            if after < 0:
                link, link_gen = after, 0
            else:
                link, link_gen = canon_of[after], canon_gen[after]
            state[block] = _COMMITTED
            hash_of[block] = h
            link_of[block] = link
            link_gen_of[block] = link_gen
            twin = index.get(h)
            if twin is None:
                index[h] = block
                indexed[block] = True
                canon = block
                if listener is not None:
                    parent = None if after < 0 else hash_of[after]
                    listener.blocks_stored([h], parent, tokens[i].tolist(), self.block_size)
            elif (
                link_of[twin] == link
                and link_gen_of[twin] == link_gen
                and np.array_equal(self._tokens[twin], tokens[i])
            ):
                canon = twin
            else:
                canon = block
            canon_of[block] = canon
            canon_gen[block] = int(gen[canon])

    def _announce(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        values: npt.NDArray[np.int32],
        stored: list[int] | None,
        parent_hash: int | None,
    ) -> None:
        """Tell the listener about each run of consecutive newly indexed blocks (``stored`` None: all of them)."""
        assert self.listener is not None
        if stored is None:  # one run, the whole commit: no walk over the positions
            self._announce_run(hashes, values, 0, len(blocks), parent_hash)
            return
        start = 0
        while start < len(stored):
            end = start + 1
            while end < len(stored) and stored[end] == stored[end - 1] + 1:
                end += 1
            self._announce_run(hashes, values, stored[start], stored[end - 1] + 1, parent_hash)
            start = end

    def _announce_run(
        self, hashes: Sequence[int], values: npt.NDArray[np.int32], lo: int, hi: int, parent_hash: int | None
    ) -> None:
        """``blocks_stored`` for the newly indexed blocks ``lo .. hi-1`` of a commit."""
        assert self.listener is not None
        parent = parent_hash if lo == 0 else hashes[lo - 1]
        run = values[lo:hi].reshape(-1)
        # a long run's tokens as a lazy column: a list only for a listener that reads them
        tokens = IntColumn([run.copy()]) if hi - lo >= self.bulk_from else run.tolist()
        self.listener.blocks_stored(list(hashes[lo:hi]), parent, tokens, self.block_size)

    def clear_cache(self) -> int:
        """Forget every cached block nobody holds (EVICTABLE becomes FREE); returns how many.

        Blocks held by requests or pending on a step stay as they are. The
        listener hears ``all_cleared`` when the index ends up empty, else
        ``blocks_removed`` for the hashes that went.
        """
        removed: list[int] = []
        evict = self._evict
        count = len(evict)
        while len(evict):
            block = evict.pop()
            self._unindex(block, removed)
            self._state[block] = _FREE
            self._free.append(block)
        if self.listener is not None:
            if not self._index:
                self.listener.all_cleared()
            elif removed:
                self.listener.blocks_removed(removed)
        return count

    def share(self, blocks: Sequence[int] | npt.NDArray[np.int64], *, hit: bool = True) -> None:
        """Take one more reference on each of ``blocks`` (a prefix-cache hit, unless ``hit`` is False).

        ``hit=False`` is for holders that are not requests (a write-back to the
        host tier): the reference keeps the block, but the eviction policy does
        not count it as reuse. A run of blocks (a 200k-token hit is 12.5k) goes
        in a few C-level passes: one vectorised state read and check, bulk
        removal of the revived blocks from the eviction order, one vectorised
        state write, and refcounts set by ``map``.
        """
        if len(blocks) == 1:
            self._share_one(int(blocks[0]), hit)
        elif len(blocks):
            self.share_run(blocks if isinstance(blocks, np.ndarray) else np.array(blocks, dtype=np.int64), hit=hit)

    def _share_one(self, block: int, hit: bool) -> None:
        s = self._state[block]
        if s != _COMMITTED and s != _EVICTABLE:
            raise IllegalTransition(f"block {block}", BlockState(s).name, "share")
        if s == _EVICTABLE:
            self._evict.remove(block)
            self._state[block] = _COMMITTED
        self._refcount[block] += 1
        if hit:
            self._evict.hit(self._hash[block])  # type: ignore[arg-type]  # committed: hashed

    def share_run(self, ids: npt.NDArray[np.int64], *, hit: bool = True) -> list[int]:
        """:meth:`share` for a run of distinct blocks given as an array; returns them as a new list (the caller's)."""
        if len(ids) <= 1:
            if len(ids):
                self._share_one(int(ids[0]), hit)
            return ids.tolist()  # type: ignore[no-any-return]
        states = self._states()[ids]
        lo, hi = int(states.min()), int(states.max())
        if lo < _COMMITTED or hi > _EVICTABLE:  # COMMITTED and EVICTABLE are adjacent
            bad = int(ids[int(np.argmin((states >= _COMMITTED) & (states <= _EVICTABLE)))])
            raise IllegalTransition(f"block {bad}", BlockState(self._state[bad]).name, "share")
        ids_list: list[int] = ids.tolist()
        if hi == _EVICTABLE:  # revive them (the eviction policy forgets them, they become COMMITTED)
            revived = ids if lo == _EVICTABLE else ids[states == _EVICTABLE]
            self._evict.remove_many(revived)
            self._states()[revived] = _COMMITTED
        _ints(self._refcount)[ids] += 1  # distinct ids: one vectorised add
        if hit:
            self._evict.hit_many(map(self._hash.__getitem__, ids_list))  # type: ignore[arg-type]  # committed: hashed
        return ids_list

    def release(self, blocks: Iterable[int], hold_until_step: int | None) -> None:
        """Drop one reference on each block (a request let them go).

        A block whose last reference goes becomes PENDING until step
        ``hold_until_step`` completes when a step may still touch it, else
        EVICTABLE (cached content) or FREE. "A step may still touch it" counts
        every releaser: a shared block let go first by a request in a step in
        flight stays PENDING until that step completes, whoever lets it go
        last. Blocks are released last first so the LRU evicts a request's
        tail before its shared prefix.

        A long list of distinct blocks (a finished request's table) goes in a
        few vectorised passes (:meth:`_release_run`) with exactly the outcome
        of the block-by-block loop below, which short lists and lists naming a
        block twice take.
        """
        blocks = list(blocks)
        n = len(blocks)
        if n >= self.bulk_from:
            ids = np.array(blocks, dtype=np.int64)
            if self._distinct(ids, blocks):
                self._release_run(ids, hold_until_step)
                return
        for block in blocks:
            s = self._state[block]
            if s != _OWNED and s != _COMMITTED:
                raise IllegalTransition(f"block {block}", BlockState(s).name, "release")
        if n > 1 and len(set(blocks)) != n:  # the same block twice: enough references?
            for block, times in Counter(blocks).items():
                if times > self._refcount[block]:
                    raise IllegalTransition(
                        f"block {block}",
                        self.state(block).name,
                        "release",
                        f"{times} releases, refcount {self._refcount[block]}",
                    )
        refcount = self._refcount
        held_for = self._held_for
        completed = self._completed
        for block in reversed(blocks):
            rc = refcount[block] - 1
            refcount[block] = rc
            if hold_until_step is not None and hold_until_step > held_for[block]:
                held_for[block] = hold_until_step
            if rc:
                continue
            step = held_for[block]
            if step > completed:
                self._state[block] = _PENDING
                self._hold([block], step)
            else:
                self._settle(block)

    def release_table(self, ids: npt.NDArray[np.int64], hold_until_step: int | None) -> None:
        """:meth:`release` of a block table the caller already holds as an int64 array (same outcome, same errors).

        A finishing request's table (about 1,900 blocks in the coding-agent
        hour) is turned into an array once by the scheduler, which the prefix
        matcher keeps as the request's run as well; here it goes straight to
        the vectorised passes instead of being copied to a list and converted
        again. A short table, or one naming a block twice, takes
        :meth:`release`'s path.
        """
        if len(ids) >= self.bulk_from and self._distinct(ids):
            self._release_run(ids, hold_until_step)
        else:
            self.release(ids.tolist(), hold_until_step)

    def _distinct(self, ids: npt.NDArray[np.int64], blocks: Sequence[int] | None = None) -> bool:
        """Whether ``ids`` (valid block ids; ``blocks``: the same ids as a sequence, if the caller has one) name
        each block once.

        O(n): a short run through a set of its ids (one C-level pass); a long one
        through a scratch array, each block's position written and read back (a
        block given twice reads back its later position only), which costs a few
        numpy calls whatever the length.
        """
        if len(ids) <= 128:
            return len(set(ids.tolist() if blocks is None else blocks)) == len(ids)
        slot = self._slot
        where = np.arange(len(ids), dtype=np.int64)
        slot[ids] = where  # a block given twice keeps its last position only
        return bool(np.array_equal(slot[ids], where))

    def _release_run(self, ids: npt.NDArray[np.int64], hold_until_step: int | None) -> None:
        """:meth:`release` of distinct blocks: check, decrement, then hold or settle those at zero, last first."""
        states = self._states()[ids]
        ok = (states == _OWNED) | (states == _COMMITTED)
        if not bool(ok.all()):
            bad = int(ids[int(np.argmin(ok))])
            raise IllegalTransition(f"block {bad}", BlockState(self._state[bad]).name, "release")
        refcount = _ints(self._refcount)
        refcount[ids] -= 1  # OWNED and COMMITTED blocks hold at least one reference each
        held_for = _ints(self._held_for)
        if hold_until_step is not None:
            held_for[ids] = np.maximum(held_for[ids], hold_until_step)
        last_first = ids[::-1]
        gone = last_first[refcount[last_first] == 0]
        if not len(gone):
            return
        steps = held_for[gone]
        later = steps > self._completed
        if bool(later.any()):
            waiting = gone[later]
            self._states()[waiting] = _PENDING
            waiting_steps = steps[later]
            first = int(waiting_steps[0])
            if bool((waiting_steps == first).all()):
                self._hold(waiting.tolist(), first)
            else:  # shared blocks held for different steps: each goes to its own step's batch
                for block, step in zip(waiting.tolist(), waiting_steps.tolist(), strict=True):
                    self._hold([block], step)
            gone = gone[~later]
        if len(gone):
            self._settle_run(gone)

    def _hold(self, blocks: list[int], step: int) -> None:
        """Queue ``blocks`` to settle when ``step`` completes (the queue stays in step order)."""
        pending = self._pending
        if pending and pending[-1][0] == step:
            pending[-1][1].extend(blocks)
        elif not pending or pending[-1][0] < step:
            pending.append((step, blocks))
        else:  # an older step than the newest queued: rare (a shared block held for an earlier step)
            i = len(pending) - 1
            while i > 0 and pending[i - 1][0] >= step:
                i -= 1
            if pending[i][0] == step:
                pending[i][1].extend(blocks)
            else:
                pending.insert(i, (step, blocks))

    def step_completed(self, step_id: int) -> int:
        """Settle every block held for a step up to ``step_id``; returns how many."""
        pending = self._pending
        settled = 0
        self._completed = max(self._completed, step_id)
        while pending and pending[0][0] <= step_id:
            _, blocks = pending.popleft()
            if len(blocks) >= self.bulk_from:
                self._settle_run(np.array(blocks, dtype=np.int64))
            else:
                for block in blocks:
                    self._settle(block)
            settled += len(blocks)
        return settled

    # ---------------------------------------------------------------- helpers
    def _settle(self, block: int) -> None:
        """A block nobody holds and no step touches: keep it cached if it is the indexed copy."""
        self._held_for[block] = -1
        if self._indexed[block]:
            self._state[block] = _EVICTABLE
            self._evict.add(block, self._hash[block], self._depth[block])  # type: ignore[arg-type]  # indexed: hashed
        else:
            self._hash[block] = None
            self._state[block] = _FREE
            self._free.append(block)

    def _settle_run(self, ids: npt.NDArray[np.int64]) -> None:
        """:meth:`_settle` for distinct blocks, in order: indexed copies become evictable, the rest free."""
        _ints(self._held_for)[ids] = -1
        indexed = _flags(self._indexed)[ids]
        states = self._states()
        cached = ids if bool(indexed.all()) else ids[indexed]
        if len(cached):
            states[cached] = _EVICTABLE
            self._evict.add_many(cached, map(self._hash.__getitem__, cached), _ints(self._depth)[cached])  # type: ignore[arg-type]
        if len(cached) == len(ids):
            return
        freed = ids[~indexed]
        states[freed] = _FREE
        freed_list: list[int] = freed.tolist()
        deque(map(self._hash.__setitem__, freed_list, repeat(None)), maxlen=0)
        self._free.extend(freed_list)

    def _unindex(self, block: int, removed: list[int] | None) -> None:
        h = self._hash[block]
        if h is not None:
            if self._indexed[block]:
                del self._index[h]
                self._indexed[block] = False
                if removed is not None:
                    removed.append(h)
            self._hash[block] = None

    # ------------------------------------------------------------- invariants
    def check_invariants(self, holders: dict[int, int] | None = None) -> None:
        """Raise :class:`InvariantViolation` if the pool's books do not balance.

        ``holders`` maps block id to how many requests hold it; when given, each
        block's refcount must equal it.
        """
        problems: list[str] = []
        free_set = set(self._free)
        if len(free_set) != len(self._free):
            problems.append("a block is on the free list twice")
        pending_blocks = [b for _, blocks in self._pending for b in blocks]
        if len(set(pending_blocks)) != len(pending_blocks):
            problems.append("a block is pending twice")
        steps = [s for s, _ in self._pending]
        if steps != sorted(steps):
            problems.append("pending releases out of step order")
        pending_set = set(pending_blocks)
        for block in range(self.num_blocks):
            s = self._state[block]
            rc = self._refcount[block]
            in_free = block in free_set
            in_lru = block in self._evict
            in_pending = block in pending_set
            if in_free != (s == _FREE):
                problems.append(f"block {block}: state {BlockState(s).name} but on free list={in_free}")
            if in_lru != (s == _EVICTABLE):
                problems.append(f"block {block}: state {BlockState(s).name} but in LRU={in_lru}")
            if in_pending != (s == _PENDING):
                problems.append(f"block {block}: state {BlockState(s).name} but pending={in_pending}")
            if s in (_FREE, _EVICTABLE, _PENDING) and rc != 0:
                problems.append(f"block {block}: state {BlockState(s).name} with refcount {rc}")
            if s == _OWNED and rc != 1:
                problems.append(f"block {block}: OWNED with refcount {rc}")
            if s == _COMMITTED and rc < 1:
                problems.append(f"block {block}: COMMITTED with refcount {rc}")
            if s in (_COMMITTED, _EVICTABLE) and self._hash[block] is None:
                problems.append(f"block {block}: {BlockState(s).name} without a hash")
            if s in (_FREE, _OWNED) and self._hash[block] is not None:
                problems.append(f"block {block}: {BlockState(s).name} still carries a hash")
            h = self._hash[block]
            if bool(self._indexed[block]) != (h is not None and self._index.get(h) == block):
                problems.append(f"block {block}: indexed flag {bool(self._indexed[block])} disagrees with the index")
            if self._held_for[block] != -1 and s in (_FREE, _EVICTABLE):
                problems.append(f"block {block}: {BlockState(s).name} still held for step {self._held_for[block]}")
            if s == _EVICTABLE and self._index.get(self._hash[block] or 0) != block:
                problems.append(f"block {block}: EVICTABLE but not the indexed copy of its content")
            if holders is not None and rc != holders.get(block, 0):
                problems.append(f"block {block}: refcount {rc} but {holders.get(block, 0)} holders")
        for h, block in self._index.items():
            if self._hash[block] != h:
                problems.append(f"index maps hash to block {block} whose hash differs")
            if self._state[block] not in (_COMMITTED, _EVICTABLE, _PENDING):
                problems.append(f"index points at block {block} in state {BlockState(self._state[block]).name}")
        if problems:
            raise InvariantViolation("block pool: " + "; ".join(problems[:10]))
