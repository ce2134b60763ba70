"""The HostTier beside a BlockPool under random write-back / load / drop / step traffic, against a model.

Holders (stand-ins for requests) allocate device blocks, commit them with
content drawn from a tiny alphabet and let them go; the tier writes cached
blocks to the host and loads host copies into blocks a holder owns; steps are
launched, completed and failed in order. The model keeps, independently of the
code, what each slot must be (state, content, the device block of its transfer
and the step carrying it) and the tier's eviction order, and after every rule:

- no block is handed out while a write from it is in flight (the rule this
  machine exists for), nor while a step in flight references it;
- a block being loaded into is never matched as a prefix before its step completes;
- every slot's state, content and device block equal the model's;
- both machines' invariant checks pass, with refcounts equal to holders plus writes.
"""

from __future__ import annotations

import os
from collections import Counter

import attrs
import numpy as np
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tokensched.errors import CapacityError, IllegalTransition
from tokensched.machines.blocks import BlockPool, BlockState
from tokensched.machines.host_tier import HostTier, SlotState

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 2
MAX_IN_FLIGHT = 2
CONTENTS = (
    1,
    2,
    3,
    4,
    5,
    6,
)  # more contents than slots, so writes evict; content c: tokens (c, c), hash 100 + c, first block of its chain


@attrs.define
class Slot:
    state: SlotState = SlotState.FREE
    content: int | None = None
    device: int | None = None
    step: int | None = None


class HostTierMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.host = HostTier(BlockPool(1, BS), 1)
        self.slots: list[Slot] = []
        self.lru: list[int] = []  # RESIDENT slots, next victim first
        self.held: Counter[int] = Counter()  # device block -> holders' references
        self.committed: dict[int, int] = {}  # device block a holder committed -> content
        self.in_flight: list[tuple[int, frozenset[int]]] = []  # (step, device blocks it references)
        self.next_step = 0
        self.queue: list[int] = []  # slots in transfer, in the order the transfers started

    @initialize(num_blocks=st.integers(3, 6), num_slots=st.integers(1, 3))
    def make(self, num_blocks: int, num_slots: int) -> None:
        self.host = HostTier(BlockPool(num_blocks, BS), num_slots)
        self.slots = [Slot() for _ in range(num_slots)]

    # ------------------------------------------------------------ helpers
    @property
    def pool(self) -> BlockPool:
        return self.host.pool

    def writing(self) -> set[int]:
        return {s.device for s in self.slots if s.state is SlotState.WRITING and s.device is not None}

    def loading(self) -> set[int]:
        return {s.device for s in self.slots if s.state is SlotState.LOADING and s.device is not None}

    def pick(self, data: st.DataObject, likely: list[int], n: int | None = None) -> int:
        """Mostly one of ``likely`` (a call that should succeed), sometimes anything (one that may be refused)."""
        if likely and data.draw(st.integers(0, 3)):
            choice: int = data.draw(st.sampled_from(sorted(likely)))
            return choice
        return data.draw(st.integers(0, (self.pool.num_blocks if n is None else n) - 1))

    def step_for_transfer(self) -> int:
        """The newest step in flight, launched first if none is (transfers ride in a step)."""
        if not self.in_flight:
            self.launch()
        return self.in_flight[-1][0]

    def newest(self) -> int | None:
        return self.in_flight[-1][0] if self.in_flight else None

    # -------------------------------------------------------------- rules
    @precondition(lambda self: sum(self.held.values()) < self.pool.num_blocks - 1)
    @rule()
    def allocate(self) -> None:
        before = [self.pool.state(b) for b in range(self.pool.num_blocks)]
        try:
            block = self.pool.allocate_one()
        except CapacityError:
            assert self.pool.num_free == 0
            return
        assert before[block] in (BlockState.FREE, BlockState.EVICTABLE), f"handed out block {block} in {before[block]}"
        assert block not in self.writing(), f"block {block} handed out while a write from it is in flight"
        assert all(block not in refs for _, refs in self.in_flight), f"block {block} reused under a step in flight"
        self.held[block] += 1
        self.committed.pop(block, None)

    @precondition(lambda self: sum(self.held.values()) < self.pool.num_blocks // 2)  # leave room for loads
    @rule(content=st.sampled_from(CONTENTS))
    def compute(self, content: int) -> None:
        """A holder computes a block: allocate and commit in one go (cached content to write back)."""
        self.allocate()
        fresh = [b for b in self.held if self.pool.state(b) is BlockState.OWNED and b not in self.loading()]
        if fresh:
            block = fresh[-1]
            self.pool.commit([block], [100 + content], [content] * BS, self.pool.root(None))
            self.committed[block] = content

    @rule(data=st.data(), content=st.sampled_from(CONTENTS))
    def commit(self, data: st.DataObject, content: int) -> None:
        owned = [
            b for b in self.held if self.pool.state(b) is BlockState.OWNED and b not in self.loading()
        ]  # a loaded block is committed when its step completes, by the scheduler
        if not owned:
            return
        block = data.draw(st.sampled_from(sorted(owned)))
        self.pool.commit([block], [100 + content], [content] * BS, self.pool.root(None))
        self.committed[block] = content

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.held:
            return
        block = data.draw(st.sampled_from(sorted(self.held)))
        self.pool.release([block], self.newest())
        self.held[block] -= 1
        if not self.held[block]:
            del self.held[block]

    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        contents = {s.content for s in self.slots}
        cached = [b for b in range(self.pool.num_blocks) if self.pool.block_hash(b) is not None]
        block = self.pick(
            data,
            [
                b
                for b in cached
                if self.pool.cached_block(self.pool.block_hash(b) or 0) == b and self.pool.block_hash(b) not in contents
            ],
        )
        step = self.step_for_transfer()
        state = self.pool.state(block)
        h = self.pool.block_hash(block)
        on_host = any(s.content == h for s in self.slots if s.state is not SlotState.FREE)
        free = [i for i, s in enumerate(self.slots) if s.state is SlotState.FREE]
        legal = state in (BlockState.COMMITTED, BlockState.EVICTABLE) and h is not None and not on_host
        legal = legal and self.pool.cached_block(h) == block if h is not None else False
        try:
            slot = self.host.write(block, step)
        except (IllegalTransition, CapacityError) as e:
            assert not legal or (not free and not self.lru), f"write of block {block} refused: {e}"
            return
        assert legal, f"write of block {block} in {state} accepted"
        if free:
            assert slot in free, f"write took slot {slot}, but {free} were free"
        else:
            event("host eviction")
            assert slot == self.lru.pop(0), f"write evicted slot {slot}, not the oldest resident"
        self.slots[slot] = Slot(SlotState.WRITING, h, block, step)
        self.queue.append(slot)
        self.in_flight[-1] = (step, self.in_flight[-1][1] | {block})

    @rule(data=st.data())
    def load(self, data: st.DataObject) -> None:
        slot = self.pick(data, [i for i, s in enumerate(self.slots) if s.state is SlotState.RESIDENT], len(self.slots))
        block = self.pick(data, [b for b in self.held if self.pool.state(b) is BlockState.OWNED])
        step = self.step_for_transfer()
        legal = self.slots[slot].state is SlotState.RESIDENT and self.pool.state(block) is BlockState.OWNED
        try:
            self.host.load(slot, block, step)
        except IllegalTransition:
            assert not legal
            return
        assert legal, f"load of slot {slot} ({self.slots[slot].state}) into block {block} accepted"
        event("load")
        self.lru.remove(slot)
        self.slots[slot] = attrs.evolve(self.slots[slot], state=SlotState.LOADING, device=block, step=step)
        self.queue.append(slot)
        self.in_flight[-1] = (step, self.in_flight[-1][1] | {block})

    @precondition(lambda self: any(s.state is SlotState.RESIDENT for s in self.slots))
    @rule(data=st.data())
    def fetch(self, data: st.DataObject) -> None:
        """What admission does on a host hit: a holder allocates a block and loads a resident slot into it."""
        slot = data.draw(st.sampled_from([i for i, s in enumerate(self.slots) if s.state is SlotState.RESIDENT]))
        before = len(self.held)
        self.allocate()
        if len(self.held) == before:
            return
        block = max(self.held, key=lambda b: self.pool.state(b) is BlockState.OWNED and b not in self.loading())
        step = self.step_for_transfer()
        self.host.load(slot, block, step)
        event("load")
        self.lru.remove(slot)
        self.slots[slot] = attrs.evolve(self.slots[slot], state=SlotState.LOADING, device=block, step=step)
        self.queue.append(slot)
        self.in_flight[-1] = (step, self.in_flight[-1][1] | {block})

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        slot = data.draw(st.integers(0, len(self.slots) - 1))
        legal = self.slots[slot].state is SlotState.RESIDENT
        try:
            self.host.drop(slot)
        except IllegalTransition:
            assert not legal
            return
        assert legal
        self.lru.remove(slot)
        self.slots[slot] = Slot()

    @precondition(lambda self: len(self.in_flight) < MAX_IN_FLIGHT)
    @rule()
    def launch(self) -> None:
        self.in_flight.append((self.next_step, frozenset(self.held)))
        self.next_step += 1

    @precondition(lambda self: bool(self.in_flight))
    @rule(failed=st.booleans())
    def finish_oldest(self, failed: bool) -> None:
        step, _ = self.in_flight.pop(0)
        if failed:
            self.host.step_failed(step)
        else:
            self.host.step_completed(step)
        self.pool.step_completed(step)
        settling = [i for i in self.queue if (self.slots[i].step or 0) <= step]
        self.queue = [i for i in self.queue if i not in settling]
        for i in settling:
            s = self.slots[i]
            if s.state is SlotState.WRITING and failed:
                self.slots[i] = Slot()
                continue
            self.slots[i] = Slot(SlotState.RESIDENT, s.content)
            self.lru.append(i)

    # --------------------------------------------------------- invariants
    @invariant()
    def slots_match_the_model(self) -> None:
        for i, s in enumerate(self.slots):
            assert self.host.state(i) is s.state, f"slot {i}: {self.host.state(i)}, model {s.state}"
            assert self.host.slot_hash(i) == s.content, f"slot {i}: hash {self.host.slot_hash(i)}, model {s.content}"
            assert self.host.device_block(i) == s.device
        assert self.host._evict.order() == self.lru
        counts = self.host.counts()
        assert sum(counts.values()) == len(self.slots)

    @invariant()
    def books_balance(self) -> None:
        self.host.check_invariants()
        holders = Counter(self.held)
        holders.update(
            b for s in self.slots if s.state is SlotState.WRITING and s.device is not None for b in [s.device]
        )
        self.pool.check_invariants(dict(holders))

    @invariant()
    def a_block_under_write_keeps_its_content(self) -> None:
        for s in self.slots:
            if s.state is SlotState.WRITING:
                assert s.device is not None
                assert self.pool.state(s.device) is BlockState.COMMITTED
                assert self.pool.block_hash(s.device) == s.content

    @invariant()
    def a_block_under_load_is_not_matchable(self) -> None:
        for block in self.loading():
            assert self.pool.state(block) in (BlockState.OWNED, BlockState.PENDING)
            for c in CONTENTS:
                tokens = np.full(BS, c, dtype=np.int32)
                assert block not in self.pool.match_prefix([100 + c], tokens, self.pool.root(None))


TestHostTier = HostTierMachine.TestCase
TestHostTier.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
