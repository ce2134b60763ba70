"""Bulk vs one by one: a pool that commits, releases and settles runs of blocks in vectorised passes ends up
exactly where the block-by-block loops do, under every eviction policy.

Two pools see the same random traffic (admissions sharing prefixes, commits,
releases held for steps in flight, steps completing, cache clears, pinned
content): one takes the vectorised path for every run of two blocks or more,
the other never takes it; a third, like the first, is handed each released
table as an int64 array (``release_table``, what a finishing request takes).
After each operation their states, refcounts,
hashes, links, prefix index, free lists, eviction orders and pending batches
must be equal, and a refused call must leave both unchanged.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched.errors import CapacityError, IllegalTransition
from tokensched.machines.blocks import BlockPool, BlockState
from tokensched.machines.eviction import EVICTION_POLICIES, PinnedEviction, make_eviction
from tokensched.machines.prefix import BlockHasher, Tokens

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 2
HASHER = BlockHasher(BS, secret=b"bulk vs one by one")


class WeakHasher(BlockHasher):
    """Five hash values in all: runs repeat hashes and collide with other content (hash to find, compare to confirm)."""

    def extend(self, hashes: list[int], tokens: Tokens, root: int) -> None:
        start = len(hashes)
        super().extend(hashes, tokens, root)
        hashes[start:] = [h % 5 for h in hashes[start:]]


WEAK = WeakHasher(BS, secret=b"bulk vs one by one")
PREFIXES = ((), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 7, 8), (9, 9, 9, 9, 9, 9))


class BulkPool(BlockPool):
    bulk_from = 2


class OneByOnePool(BlockPool):
    bulk_from = 1 << 30


def observe(pool: BlockPool) -> tuple[Any, ...]:
    blocks = tuple((pool.state(b), pool.refcount(b), pool.block_hash(b)) for b in range(pool.num_blocks))
    pending = tuple((step, tuple(held)) for step, held in pool._pending)
    links = tuple(
        tuple(a.tolist()) for a in (pool._link, pool._link_gen, pool._canon, pool._canon_gen, pool._depth, pool._gen)
    )
    index = tuple(sorted(pool._index.items()))
    return blocks, tuple(pool._free), tuple(pool.eviction.order()), pending, pool.num_free, links, index


class Twins:
    """The two pools and the holders they share (block tables are identical while the pools agree)."""

    def __init__(self, policy: str, num_blocks: int, hasher: BlockHasher = HASHER) -> None:
        self.hasher = hasher
        self.pools = [
            cls(num_blocks, BS, eviction=make_eviction(policy, pinned_cap=4))
            for cls in (BulkPool, OneByOnePool, BulkPool)
        ]
        self.holders: list[list[int]] = []
        self.in_flight: list[int] = []
        self.next_step = 0

    def same(self) -> None:
        bulk, single, table = self.pools
        assert observe(bulk) == observe(single)
        assert observe(table) == observe(single)
        for pool in self.pools:
            pool.check_invariants()

    def admit(self, tokens: list[int]) -> None:
        hashes: list[int] = []
        self.hasher.extend(hashes, tokens, self.hasher.root(None))
        if len(set(hashes)) < len(hashes):
            event("a run repeats a hash")
        tables = []
        for pool in self.pools:
            run = pool.match_run(hashes, tokens, pool.root(None))[: (len(tokens) - 1) // BS]
            need = (len(tokens) + BS - 1) // BS - len(run)
            if need + pool.count_evictable(run) > pool.num_free:
                tables.append(None)
                continue
            blocks = pool.share_run(run) + pool.allocate(need)
            full = len(tokens) // BS
            if full > len(run):
                after = blocks[len(run) - 1] if len(run) else pool.root(None)
                pool.commit(
                    blocks[len(run) : full], hashes[len(run) : full], tokens[len(run) * BS : full * BS], after, len(run)
                )
            tables.append(blocks)
        assert tables[0] == tables[1] == tables[2]
        if tables[0] is not None:
            event("admitted")
            self.holders.append(tables[0])

    def release(self, which: int, hold: bool) -> None:
        blocks = self.holders.pop(which % len(self.holders))
        step = self.in_flight[-1] if hold and self.in_flight else None
        if len(blocks) >= 2:
            event("a run released")
        for pool in self.pools:
            self._release(pool, blocks, step)

    def launch(self) -> None:
        self.in_flight.append(self.next_step)
        self.next_step += 1

    def complete(self) -> None:
        step = self.in_flight.pop(0)
        for pool in self.pools:
            pool.step_completed(step)

    def bad_release(self, which: int) -> None:
        """A run naming a block nobody holds (or a block more often than it is held) is refused by both."""
        pool = self.pools[0]
        victim = which % pool.num_blocks
        held = self.holders[0] if self.holders else []
        if pool.state(victim) in (BlockState.OWNED, BlockState.COMMITTED):
            blocks = [*held, *[victim] * (pool.refcount(victim) + 1)]  # one release too many
        else:
            blocks = [*held, victim] if victim not in held else [victim]  # a block nobody holds: a distinct run
        before = observe(self.pools[0])
        for pool in self.pools:
            with pytest.raises(IllegalTransition):
                self._release(pool, blocks, None)
        assert observe(self.pools[0]) == before

    def _release(self, pool: BlockPool, blocks: list[int], step: int | None) -> None:
        if pool is self.pools[2]:
            table = np.array(blocks, dtype=np.int64)
            table.flags.writeable = False  # as the scheduler hands it over
            pool.release_table(table, step)
        else:
            pool.release(blocks, step)


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(policy=st.sampled_from(EVICTION_POLICIES), num_blocks=st.integers(4, 24), weak=st.booleans(), data=st.data())
def test_bulk_commit_release_and_settle_equal_one_by_one(
    policy: str, num_blocks: int, weak: bool, data: st.DataObject
) -> None:
    twins = Twins(policy, num_blocks, WEAK if weak else HASHER)
    if policy == "pinned":
        pinned: list[int] = []
        twins.hasher.extend(pinned, list(PREFIXES[1]), twins.hasher.root(None))
        for pool in twins.pools:
            assert isinstance(pool.eviction, PinnedEviction)
            pool.eviction.pin(pinned)
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(("admit", "admit", "release", "launch", "complete", "clear", "bad")))
        if op == "admit":
            prefix = data.draw(st.sampled_from(PREFIXES))
            tail = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=12))
            twins.admit([*prefix, *tail])
        elif op == "release" and twins.holders:
            twins.release(data.draw(st.integers(0, 99)), data.draw(st.booleans()))
        elif op == "launch":
            twins.launch()
        elif op == "complete" and twins.in_flight:
            twins.complete()
        elif op == "clear":
            for pool in twins.pools:
                pool.clear_cache()
        elif op == "bad":
            twins.bad_release(data.draw(st.integers(0, 99)))
        twins.same()


def test_a_refused_allocation_changes_neither() -> None:
    twins = Twins("lru", 4)
    for pool in twins.pools:
        with pytest.raises(CapacityError):
            pool.allocate(5)
    twins.same()
