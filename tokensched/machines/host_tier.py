"""The host-memory KV tier: a fixed pool of host slots holding copies of committed device blocks.

States of one host slot (see ``specs/host.toml``)::

    FREE ──write──▶ WRITING ──write_done──▶ RESIDENT ──load──▶ LOADING ──load_done / load_failed──▶ RESIDENT
      ▲               │  ▲                    │  │
      └─write_failed──┘  └────evict_write─────┘  └──drop──▶ FREE

- WRITING: a device→host copy of a committed device block is in flight with
  step ``s``. The tier holds a reference on the device block (like a request
  would), so the block can be neither freed, handed out again nor evicted, and
  its content stays, until step ``s`` completes.
- RESIDENT: holds a finished copy of some content, indexed by its chained
  block hash; findable by :meth:`HostTier.match`, evicted in the order of the
  tier's own :class:`~tokensched.machines.eviction.EvictionPolicy` (LRU by
  default) when a write needs room.
- LOADING: a host→device copy into a device block is in flight with step
  ``s``. The device block belongs to the loading request and stays OWNED (so
  it is not matchable as a prefix) until that step completes and the
  scheduler commits it like a block it computed; the slot cannot be evicted
  meanwhile.

Transfers ride in a step like its compute: they start when the plan that
carries them is built and complete (or fail) with that step, in step order.
Every operation validates before it changes anything, so a refused call leaves
the tier and the device pool exactly as they were.

Confirming a host hit: a slot keeps its block's tokens, its depth in its chain
and its hash; :meth:`HostTier.match` takes a slot only if all three equal the
request's. Unlike the device pool, which also confirms the *link* to the block
before, a host hit trusts the keyed 64-bit chained hash for the prefix before
the block (see :mod:`tokensched.machines.prefix`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from enum import IntEnum

import numpy as np
import numpy.typing as npt

from tokensched.errors import CapacityError, IllegalTransition, InvariantViolation
from tokensched.machines.blocks import BlockPool, BlockState
from tokensched.machines.eviction import EvictionPolicy, LRUEviction


class SlotState(IntEnum):
    FREE = 0
    WRITING = 1
    RESIDENT = 2
    LOADING = 3


_FREE = SlotState.FREE.value
_WRITING = SlotState.WRITING.value
_RESIDENT = SlotState.RESIDENT.value
_LOADING = SlotState.LOADING.value


class HostTier:
    """``num_slots`` host slots beside a device :class:`BlockPool`, and the transfers between them."""

    __slots__ = (
        "_depth",
        "_device",
        "_evict",
        "_free",
        "_hash",
        "_in_flight",
        "_index",
        "_state",
        "_tokens",
        "num_slots",
        "pool",
    )

    def __init__(self, pool: BlockPool, num_slots: int, eviction: EvictionPolicy | None = None) -> None:
        if num_slots < 1:
            raise ValueError(f"num_slots must be at least 1, got {num_slots}")
        self.pool = pool
        self.num_slots = num_slots
        self._state = bytearray(num_slots)  # all FREE
        self._hash: list[int | None] = [None] * num_slots
        self._depth = [0] * num_slots
        self._tokens = np.zeros((num_slots, pool.block_size), dtype=np.int32)
        self._device = [-1] * num_slots  # the device block of a transfer in flight
        self._free: list[int] = list(range(num_slots - 1, -1, -1))  # slot 0 handed out first
        self._evict: EvictionPolicy = eviction if eviction is not None else LRUEviction()
        self._index: dict[int, int] = {}  # hash -> slot (WRITING, RESIDENT or LOADING)
        self._in_flight: deque[tuple[int, list[int]]] = deque()  # (step, its slots), in step order

    # ------------------------------------------------------------------ queries
    def state(self, slot: int) -> SlotState:
        return SlotState(self._state[slot])

    def slot_hash(self, slot: int) -> int | None:
        return self._hash[slot]

    def device_block(self, slot: int) -> int | None:
        """The device block a WRITING or LOADING slot copies from or into."""
        block = self._device[slot]
        return block if block >= 0 else None

    def counts(self) -> dict[SlotState, int]:
        counts = dict.fromkeys(SlotState, 0)
        for s in self._state:
            counts[SlotState(s)] += 1
        return counts

    @property
    def num_writable(self) -> int:
        """Slots a write can take now: FREE, or RESIDENT and evictable."""
        return len(self._free) + len(self._evict)

    @property
    def num_in_flight(self) -> int:
        return sum(len(slots) for _, slots in self._in_flight)

    def holds(self, block_hash: int) -> bool:
        """Whether some slot holds or is writing content ``block_hash`` (no second copy is written)."""
        return block_hash in self._index

    def writing_blocks(self) -> list[int]:
        """Device blocks the tier holds a reference on (WRITING slots' sources)."""
        return [self._device[s] for _, slots in self._in_flight for s in slots if self._state[s] == _WRITING]

    def match(self, hashes: Sequence[int], tokens: npt.NDArray[np.int32], first: int) -> list[int]:
        """RESIDENT slots holding blocks ``first``, ``first + 1``, ... of a request's chain, the leading run.

        ``hashes`` is the request's whole chain and ``tokens`` its tokens; a
        slot counts only if its hash, depth and tokens are the request's.
        """
        bs = self.pool.block_size
        out: list[int] = []
        for depth in range(first, len(hashes)):
            slot = self._index.get(hashes[depth])
            if slot is None or self._state[slot] != _RESIDENT or self._depth[slot] != depth:
                break
            if (depth + 1) * bs > len(tokens) or not np.array_equal(
                self._tokens[slot], tokens[depth * bs : (depth + 1) * bs]
            ):
                break
            out.append(slot)
        return out

    # ------------------------------------------------------------- transitions
    def write(self, block: int, step: int) -> int:
        """Start copying cached device ``block`` to a host slot with ``step``; returns the slot.

        The block must be the indexed copy of its content (COMMITTED or
        EVICTABLE) and the content not on the host already. Takes a FREE slot,
        else evicts the tier's next victim (RESIDENT, not loading); raises
        CapacityError when every slot is in a transfer.
        """
        pool = self.pool
        h, depth, tokens = pool.content(block)  # refuses a block that is not cached
        if pool.cached_block(h) != block:
            raise IllegalTransition(f"block {block}", pool.state(block).name, "write", "not the indexed copy")
        if h in self._index:
            slot = self._index[h]
            raise IllegalTransition(f"host slot {slot}", self.state(slot).name, "write", "content already on host")
        if self._in_flight and self._in_flight[-1][0] > step:
            raise ValueError(f"transfer with step {step} after one with step {self._in_flight[-1][0]}")
        if self._free:
            slot = self._free.pop()
        elif len(self._evict):
            slot = self._evict.pop()
            self._unindex(slot)
        else:
            raise CapacityError(f"all {self.num_slots} host slots are in a transfer")
        pool.share([block], hit=False)  # the write's reference: no reuse until the copy is done
        self._state[slot] = _WRITING
        self._hash[slot] = h
        self._depth[slot] = depth
        self._tokens[slot] = tokens
        self._device[slot] = block
        self._index[h] = slot
        self._queue(slot, step)
        return slot

    def load(self, slot: int, block: int, step: int) -> None:
        """Start copying RESIDENT ``slot`` into device ``block`` (OWNED by the loading request) with ``step``."""
        if self._state[slot] != _RESIDENT:
            raise IllegalTransition(f"host slot {slot}", self.state(slot).name, "load")
        if self.pool.state(block) is not BlockState.OWNED:
            raise IllegalTransition(f"block {block}", self.pool.state(block).name, "load", "loads go into OWNED blocks")
        if self._in_flight and self._in_flight[-1][0] > step:
            raise ValueError(f"transfer with step {step} after one with step {self._in_flight[-1][0]}")
        self._evict.remove(slot)
        self._state[slot] = _LOADING
        self._device[slot] = block
        self._queue(slot, step)

    def step_completed(self, step: int) -> int:
        """Transfers of steps up to ``step`` are done: writes become RESIDENT, loads RESIDENT again."""
        return self._settle(step, failed=False)

    def step_failed(self, step: int) -> int:
        """Transfers of steps up to ``step`` did not happen: writes free their slot, loads leave it RESIDENT."""
        return self._settle(step, failed=True)

    def drop(self, slot: int) -> None:
        """Forget a RESIDENT slot's content (FREE)."""
        if self._state[slot] != _RESIDENT:
            raise IllegalTransition(f"host slot {slot}", self.state(slot).name, "drop")
        self._evict.remove(slot)
        self._unindex(slot)
        self._state[slot] = _FREE
        self._free.append(slot)

    def clear(self) -> int:
        """Drop every RESIDENT slot; returns how many."""
        resident = [s for s in range(self.num_slots) if self._state[s] == _RESIDENT]
        for slot in resident:
            self.drop(slot)
        return len(resident)

    # ---------------------------------------------------------------- helpers
    def _queue(self, slot: int, step: int) -> None:
        if self._in_flight and self._in_flight[-1][0] == step:
            self._in_flight[-1][1].append(slot)
        else:
            self._in_flight.append((step, [slot]))

    def _settle(self, step: int, *, failed: bool) -> int:
        done = 0
        release: list[int] = []
        while self._in_flight and self._in_flight[0][0] <= step:
            _, slots = self._in_flight.popleft()
            for slot in slots:
                if self._state[slot] == _WRITING:
                    release.append(self._device[slot])
                    if failed:
                        self._unindex(slot)
                        self._state[slot] = _FREE
                        self._free.append(slot)
                        self._device[slot] = -1
                        continue
                self._state[slot] = _RESIDENT
                self._device[slot] = -1
                self._evict.add(slot, self._hash[slot] or 0, self._depth[slot])
            done += len(slots)
        if release:
            self.pool.release(release, None)  # the copies are done (or abandoned): the blocks may go
        return done

    def _unindex(self, slot: int) -> None:
        h = self._hash[slot]
        if h is not None and self._index.get(h) == slot:
            del self._index[h]
        self._hash[slot] = None

    # ------------------------------------------------------------- invariants
    def check_invariants(self) -> None:
        """Raise :class:`InvariantViolation` if the tier's books do not balance (with the device pool's)."""
        problems: list[str] = []
        free_set = set(self._free)
        if len(free_set) != len(self._free):
            problems.append("a slot is on the free list twice")
        queued = [s for _, slots in self._in_flight for s in slots]
        if len(set(queued)) != len(queued):
            problems.append("a slot is in two transfers")
        steps = [s for s, _ in self._in_flight]
        if steps != sorted(steps):
            problems.append("transfers out of step order")
        queued_set = set(queued)
        pool = self.pool
        writing_from: list[int] = []
        for slot in range(self.num_slots):
            s = self._state[slot]
            name = SlotState(s).name
            h = self._hash[slot]
            if (slot in free_set) != (s == _FREE):
                problems.append(f"host slot {slot}: {name} but on free list={slot in free_set}")
            if (slot in self._evict) != (s == _RESIDENT):
                problems.append(f"host slot {slot}: {name} but evictable={slot in self._evict}")
            if (slot in queued_set) != (s in (_WRITING, _LOADING)):
                problems.append(f"host slot {slot}: {name} but in a transfer={slot in queued_set}")
            if (h is None) != (s == _FREE) or (h is not None and self._index.get(h) != slot):
                problems.append(f"host slot {slot}: {name} with hash {h} not indexed to it")
            block = self._device[slot]
            if (block >= 0) != (s in (_WRITING, _LOADING)):
                problems.append(f"host slot {slot}: {name} with device block {block}")
            elif s == _WRITING:
                writing_from.append(block)
                if pool.state(block) is not BlockState.COMMITTED or pool.block_hash(block) != h:
                    problems.append(f"host slot {slot}: writing from block {block} in {pool.state(block).name}")
            elif s == _LOADING and pool.state(block) not in (BlockState.OWNED, BlockState.PENDING):
                problems.append(f"host slot {slot}: loading into block {block} in {pool.state(block).name}")
        for block in set(writing_from):
            if pool.refcount(block) < writing_from.count(block):
                problems.append(f"block {block}: refcount {pool.refcount(block)} below its writes in flight")
        if len(self._index) != self.num_slots - len(self._free):
            problems.append(f"index holds {len(self._index)} hashes for {self.num_slots - len(self._free)} slots")
        if problems:
            raise InvariantViolation("host tier: " + "; ".join(problems[:10]))
