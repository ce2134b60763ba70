"""How the scheduler uses the host KV tier: write-backs at eviction, loads at admission, a budget per step.

The machine itself (host slots and their transfers) is
:class:`~tokensched.machines.host_tier.HostTier`; this module decides *what*
to move, and the scheduler calls it from three small hooks:

- **admission** (:meth:`HostKV.loadable`, :meth:`HostKV.load`): after the
  device prefix match, the blocks that follow it are looked up on the host; a
  leading run of RESIDENT slots is loaded into fresh device blocks of the
  admitted request when the :class:`LoadCost` hook says loading beats
  recomputing. The request is admitted as if those tokens were cached.
- **end of plan** (:meth:`HostKV.write_back`): the device pool's next eviction
  victims, in its own eviction policy's order, are written back while the
  step's transfer budget and the free blocks allow. Only cached blocks nobody
  holds (sessions in think time) are candidates, and only content the host
  does not hold yet. A written block rejoins the device eviction order when its
  step completes, so the blocks evicted next are those not written yet.
- **step done / failed** (:meth:`HostKV.step_completed`, :meth:`HostKV.step_failed`).

Each plan carries its copies as :class:`~tokensched.plan.KVTransfer` s, loads
first; ``host_transfer_blocks`` bounds them per step so they overlap compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from tokensched.config import SchedulerConfig
from tokensched.machines.blocks import BlockPool
from tokensched.machines.eviction import make_eviction
from tokensched.machines.host_tier import HostTier
from tokensched.plan import KVTransfer, TransferKind

NO_SLOTS: list[int] = []


@runtime_checkable
class LoadCost(Protocol):
    """The executor's say on whether a host hit is worth loading (an optional hook on an executor)."""

    def load_is_cheaper(self, num_blocks: int, block_size: int, context_tokens: int) -> bool:
        """True when copying ``num_blocks`` blocks from host beats recomputing them after ``context_tokens``."""


class AlwaysLoad:
    """The default: load every host hit.

    Recomputing a block costs its prefill FLOPs (2 x active parameters per
    token) plus attention over the whole context before it; loading moves only
    its KV bytes over the host link. For the models tokensched targets a block's
    copy takes microseconds against milliseconds of prefill, so without an
    executor that says otherwise, loading wins.
    """

    def load_is_cheaper(self, num_blocks: int, block_size: int, context_tokens: int) -> bool:
        return True


class HostKV:
    """The host tier as the scheduler sees it: a :class:`HostTier` plus the per-step plan of copies."""

    __slots__ = ("_budget", "_step", "_transfers", "budget", "load_cost", "loaded_blocks", "stored_blocks", "tier")

    def __init__(self, config: SchedulerConfig, pool: BlockPool, load_cost: LoadCost | None = None) -> None:
        self.tier = HostTier(pool, config.host_kv_blocks, make_eviction(config.host_eviction))
        self.budget = config.host_transfer_blocks
        self.load_cost: LoadCost = load_cost if load_cost is not None else AlwaysLoad()
        self._budget = 0
        self._step = -1
        self._transfers: list[KVTransfer] = []
        self.loaded_blocks = 0
        self.stored_blocks = 0

    def begin(self, step_id: int) -> None:
        """A plan for ``step_id`` starts: a fresh transfer budget."""
        self._step = step_id
        self._budget = self.budget
        self._transfers = []

    def loadable(self, hashes: Sequence[int], tokens: npt.NDArray[np.int32], first: int, known: int) -> list[int]:
        """RESIDENT slots to load after ``first`` device-cached blocks of a prompt of ``known`` tokens.

        At most what the step's budget has left, and never the block of the
        last token (a request computes at least one token, to sample from it).
        """
        bs = self.tier.pool.block_size
        limit = min(self._budget, (known - 1) // bs - first)
        if limit <= 0:
            return NO_SLOTS
        slots = self.tier.match(hashes[: first + limit], tokens, first)
        if slots and not self.load_cost.load_is_cheaper(len(slots), bs, first * bs):
            return NO_SLOTS
        return slots

    def load(self, slots: Sequence[int], blocks: Sequence[int]) -> None:
        """Start loading ``slots`` into the admitted request's fresh ``blocks`` with the step being planned."""
        for slot, block in zip(slots, blocks, strict=True):
            self.tier.load(slot, block, self._step)
            self._transfers.append(KVTransfer(TransferKind.LOAD, slot, block))
        self._budget -= len(slots)
        self.loaded_blocks += len(slots)

    def write_back(self, spare_blocks: int) -> None:
        """Write the device pool's next eviction victims to the host, within budget.

        A write holds its block until the step completes, so at most
        ``spare_blocks`` (free blocks the caller can do without until then)
        are taken.
        """
        tier = self.tier
        pool = tier.pool
        n = min(self._budget, spare_blocks, tier.num_writable)
        if n <= 0:
            return
        written = 0
        for block in pool.eviction.peek(2 * n):
            h = pool.block_hash(block)
            if h is None or tier.holds(h):
                continue
            slot = tier.write(block, self._step)
            self._transfers.append(KVTransfer(TransferKind.STORE, slot, block))
            written += 1
            if written == n:
                break
        self._budget -= written
        self.stored_blocks += written

    def take_transfers(self) -> tuple[KVTransfer, ...]:
        """The copies planned for this step, in order (loads were planned first)."""
        transfers = tuple(self._transfers)
        self._transfers = []
        return transfers

    def step_completed(self, step_id: int) -> None:
        self.tier.step_completed(step_id)

    def step_failed(self, step_id: int) -> None:
        self.tier.step_failed(step_id)
