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
"""

from __future__ import annotations

import contextlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from enum import IntEnum
from operator import itemgetter

from tokensched.errors import CapacityError, IllegalTransition, InvariantViolation
from tokensched.machines.eviction import EvictionPolicy, LRUEviction


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


class BlockPool:
    """``num_blocks`` KV blocks, their states, refcounts and the prefix index.

    The prefix index maps a block's chained content hash to the block that
    holds that content; it covers COMMITTED, EVICTABLE and PENDING blocks and
    is pruned when a block is evicted.
    """

    __slots__ = ("_depth", "_evict", "_free", "_hash", "_index", "_pending", "_refcount", "_state", "num_blocks")

    def __init__(self, num_blocks: int, eviction: EvictionPolicy | None = None) -> None:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        self.num_blocks = num_blocks
        self._state = bytearray(num_blocks)  # all FREE
        self._refcount = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        # Pop from the end: block 0 is handed out first, which keeps tests readable.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._evict: EvictionPolicy = eviction if eviction is not None else LRUEviction()
        self._depth = [0] * num_blocks  # a committed block's place in its hash chain (for cost-aware eviction)
        self._pending: deque[tuple[int, list[int]]] = deque()
        self._index: dict[int, int] = {}

    # ------------------------------------------------------------------ queries
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

    def match_prefix(self, hashes: Sequence[int]) -> list[int]:
        """Longest run of shareable blocks for a chain of block hashes (no state change).

        Batched through C-level ``map``/``itemgetter`` rather than a Python loop:
        a 200k-token prompt is 12.5k look-ups and this is on the admission path.
        """
        found = list(map(self._index.get, hashes))
        with contextlib.suppress(ValueError):  # no miss: the whole chain is cached
            found = found[: found.index(None)]
        if not found:
            return []
        matched: list[int] = found  # type: ignore[assignment]  # no None left
        states = bytes(itemgetter(*matched)(self._state)) if len(matched) > 1 else bytes([self._state[matched[0]]])
        if min(states) < _COMMITTED or max(states) > _EVICTABLE:  # COMMITTED and EVICTABLE are adjacent
            cut = next(i for i, s in enumerate(states) if s != _COMMITTED and s != _EVICTABLE)
            matched = matched[:cut]
        return matched

    def cached_prefix_length(self, hashes: Sequence[int], *, held: bool = False) -> int:
        """How many leading blocks of a hash chain are cached (and, with ``held``, also referenced).

        A binary search: O(log n) look-ups instead of :meth:`match_prefix`'s walk.
        It assumes the blocks in question form a prefix of the chain, which holds
        (almost always) because requests release their blocks tail first; use it
        for estimates, and :meth:`match_prefix` where exactness matters.
        """
        lo, hi = 0, len(hashes)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            block = self.cached_block(hashes[mid - 1])
            if block is not None and (not held or self._refcount[block] > 0):
                lo = mid
            else:
                hi = mid - 1
        return lo

    def count_evictable(self, blocks: Sequence[int]) -> int:
        """How many of ``blocks`` are EVICTABLE (sharing them takes them out of the free count)."""
        if not blocks:
            return 0
        if len(blocks) == 1:
            return int(self._state[blocks[0]] == _EVICTABLE)
        return bytes(itemgetter(*blocks)(self._state)).count(_EVICTABLE)

    # ------------------------------------------------------------- transitions
    def allocate(self, n: int) -> list[int]:
        """Hand out ``n`` blocks as OWNED (refcount 1), evicting LRU cached blocks if needed."""
        if n > len(self._free) + len(self._evict):
            raise CapacityError(f"asked for {n} blocks, {self.num_free} can be handed out")
        free = self._free
        out: list[int] = []
        for _ in range(n):
            if free:
                block = free.pop()
            else:
                block = self._evict.pop()
                self._unindex(block)
            self._state[block] = _OWNED
            self._refcount[block] = 1
            out.append(block)
        return out

    def allocate_one(self) -> int:
        """The common case of :meth:`allocate`, without the list."""
        if self._free:
            block = self._free.pop()
        elif len(self._evict):
            block = self._evict.pop()
            self._unindex(block)
        else:
            raise CapacityError("no block can be handed out")
        self._state[block] = _OWNED
        self._refcount[block] = 1
        return block

    def commit(self, block: int, block_hash: int, depth: int = 0) -> None:
        """A full OWNED block becomes COMMITTED and, unless its content is cached already, indexed."""
        if self._state[block] != _OWNED:
            raise IllegalTransition(f"block {block}", self.state(block).name, "commit")
        self._state[block] = _COMMITTED
        self._hash[block] = block_hash
        self._depth[block] = depth
        self._index.setdefault(block_hash, block)

    def share(self, blocks: Sequence[int]) -> None:
        """Take one more reference on each of ``blocks`` (a prefix-cache hit)."""
        if not blocks:
            return
        states = bytes(itemgetter(*blocks)(self._state)) if len(blocks) > 1 else bytes([self._state[blocks[0]]])
        if min(states) < _COMMITTED or max(states) > _EVICTABLE:
            bad = next(b for b, s in zip(blocks, states, strict=True) if s != _COMMITTED and s != _EVICTABLE)
            raise IllegalTransition(f"block {bad}", BlockState(self._state[bad]).name, "share")
        refcount = self._refcount
        evict = self._evict
        if _EVICTABLE in states:
            state = self._state
            for block in blocks:
                if state[block] == _EVICTABLE:
                    evict.remove(block)
                    state[block] = _COMMITTED
        hashes = self._hash
        for block in blocks:
            refcount[block] += 1
            evict.hit(hashes[block])  # type: ignore[arg-type]  # a shared block is committed: it has a hash

    def release(self, blocks: Iterable[int], hold_until_step: int | None) -> None:
        """Drop one reference on each block (a request let them go).

        A block whose last reference goes becomes PENDING until step
        ``hold_until_step`` completes when a step may still touch it, else
        EVICTABLE (cached content) or FREE. Blocks are released last first so
        the LRU evicts a request's tail before its shared prefix.
        """
        blocks = list(blocks)
        for block in blocks:
            s = self._state[block]
            if s != _OWNED and s != _COMMITTED:
                raise IllegalTransition(f"block {block}", BlockState(s).name, "release")
        if len(blocks) > 1 and len(set(blocks)) != len(blocks):  # the same block twice: enough references?
            for block, times in Counter(blocks).items():
                if times > self._refcount[block]:
                    raise IllegalTransition(
                        f"block {block}",
                        self.state(block).name,
                        "release",
                        f"{times} releases, refcount {self._refcount[block]}",
                    )
        held: list[int] = []
        for block in reversed(blocks):
            rc = self._refcount[block] - 1
            self._refcount[block] = rc
            if rc:
                continue
            if hold_until_step is not None:
                self._state[block] = _PENDING
                held.append(block)
            else:
                self._settle(block)
        if held and hold_until_step is not None:
            pending = self._pending
            if pending and pending[-1][0] == hold_until_step:
                pending[-1][1].extend(held)
            else:
                pending.append((hold_until_step, held))

    def step_completed(self, step_id: int) -> int:
        """Settle every block held for a step up to ``step_id``; returns how many."""
        pending = self._pending
        settled = 0
        while pending and pending[0][0] <= step_id:
            _, blocks = pending.popleft()
            for block in blocks:
                self._settle(block)
            settled += len(blocks)
        return settled

    # ---------------------------------------------------------------- helpers
    def _settle(self, block: int) -> None:
        """A block nobody holds and no step touches: keep it cached if it is the indexed copy."""
        h = self._hash[block]
        if h is not None and self._index.get(h) == block:
            self._state[block] = _EVICTABLE
            self._evict.add(block, h, self._depth[block])
        else:
            self._hash[block] = None
            self._state[block] = _FREE
            self._free.append(block)

    def _unindex(self, block: int) -> None:
        h = self._hash[block]
        if h is not None:
            if self._index.get(h) == block:
                del self._index[h]
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
