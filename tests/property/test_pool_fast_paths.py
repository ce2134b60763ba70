"""Fast paths vs the general path: a pool whose one-block commits, short allocations and short evictions take
scalar shortcuts, and whose runs of consecutive block ids are written as slices, ends up exactly where the
general (array) code puts it, under every eviction policy.

Two pools see the same random traffic: requests admitted with shared prefixes
(their full blocks committed in runs of random length), decodes that grow a
request block by block (one-block commits after a committed block, the
decode's block edge), releases held for steps in flight, steps completing,
cache clears and refused calls. One pool is the pool as shipped; the other
sends every commit through :meth:`BlockPool._commit_run`, every allocation
through the vectorised marking and every eviction of several blocks through
:meth:`LRUEviction.pop_many`'s windowed array path, with the lean paths off (no
slices for a range of ids, no loop for a chunk's victims). The fast pool's
thresholds are drawn too (the shipped ones, or low enough that the small pools
here take the range commit, the sliced marking and both ways of evicting a
chunk's victims). After each operation their
states, refcounts, hashes, links, prefix index, free lists, eviction orders,
pending batches and KV events heard so far must be equal, and a refused call
must raise the same error in both and change neither.
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Sequence
from typing import Any

import attrs
import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched.errors import CapacityError, IllegalTransition
from tokensched.machines.blocks import BlockPool, _count_into
from tokensched.machines.eviction import EVICTION_POLICIES, LRUEviction, PinnedEviction, make_eviction
from tokensched.machines.prefix import BlockHasher

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 2
HASHER = BlockHasher(BS, secret=b"fast vs general")
PREFIXES = ((), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 7, 8), (9, 9, 9, 9, 9, 9))


class WeakHasher(BlockHasher):
    """Five hash values in all: runs repeat hashes and collide with other content (hash to find, compare to confirm)."""

    def extend(self, hashes: list[int], tokens: Sequence[int] | npt.NDArray[np.int32], root: int) -> None:
        start = len(hashes)
        super().extend(hashes, tokens, root)
        hashes[start:] = [h % 5 for h in hashes[start:]]


WEAK = WeakHasher(BS, secret=b"fast vs general")


def observe(pool: BlockPool) -> tuple[Any, ...]:
    blocks = tuple((pool.state(b), pool.refcount(b), pool.block_hash(b)) for b in range(pool.num_blocks))
    pending = tuple((step, tuple(held)) for step, held in pool._pending)
    links = tuple(
        tuple(a.tolist()) for a in (pool._link, pool._link_gen, pool._canon, pool._canon_gen, pool._depth, pool._gen)
    )
    index = tuple(sorted(pool._index.items()))
    tokens = pool._tokens.tolist()
    return blocks, tuple(pool._free), tuple(pool.eviction.order()), pending, pool.num_free, links, index, tokens


class GeneralLRU(LRUEviction):
    """LRU that evicts any number of blocks through the windowed array path."""

    few_up_to = 0


class GeneralPool(BlockPool):
    """Commits through the run path whatever their length; allocations marked in vectorised passes."""

    bulk_from = 1  # every allocation's blocks (and every release, settle and eviction) in array passes
    lean_paths = False  # no slices for a range of ids, no loop for a chunk's victims

    def commit(
        self,
        blocks: Sequence[int],
        hashes: Sequence[int],
        tokens: Sequence[int] | npt.NDArray[np.int32],
        after: int,
        first_depth: int = 0,
    ) -> None:
        self._commit_run(blocks, hashes, tokens, after, first_depth)


class Recorder:
    """Every KV event, tokens as a plain list (a long run's come as a lazy column)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None:
        self.events.append(("stored", list(block_hashes), parent_block_hash, list(token_ids), block_size))

    def blocks_removed(self, block_hashes: list[int]) -> None:
        self.events.append(("removed", list(block_hashes)))

    def all_cleared(self) -> None:
        self.events.append(("cleared",))


@attrs.define
class Holder:
    tokens: list[int]
    blocks: list[int]
    hashes: list[int]
    committed: int


def make_policy(policy: str, general: bool) -> Any:
    if not general:
        return make_eviction(policy, pinned_cap=4)
    if policy == "lru":
        return GeneralLRU()
    if policy == "pinned":
        return PinnedEviction(GeneralLRU(), 4)
    return make_eviction(policy, pinned_cap=4)


def cached_prefix_by_probe(pool: BlockPool, hashes: list[int], held: bool) -> int:
    """:meth:`BlockPool.cached_prefix_length`'s binary search, each probe through :meth:`BlockPool.cached_block`."""
    lo, hi = 0, len(hashes)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        block = pool.cached_block(hashes[mid - 1])
        if block is not None and (not held or pool.refcount(block) > 0):
            lo = mid
        else:
            hi = mid - 1
    return lo


class Twins:
    def __init__(self, policy: str, num_blocks: int, hasher: BlockHasher, fast: type[BlockPool] = BlockPool) -> None:
        self.hasher = hasher
        self.recorders = [Recorder(), Recorder()]
        self.pools = [
            cls(num_blocks, BS, listener=rec, eviction=make_policy(policy, cls is GeneralPool))
            for cls, rec in zip((fast, GeneralPool), self.recorders, strict=True)
        ]
        self.holders: list[Holder] = []
        self.chains: list[list[int]] = []  # every admitted request's hashes, for cached_prefix_length
        self.in_flight: list[int] = []
        self.next_step = 0

    def same(self) -> None:
        fast, general = self.pools
        assert observe(fast) == observe(general)
        assert self.recorders[0].events == self.recorders[1].events
        for hashes in self.chains:
            for held in (False, True):
                assert fast.cached_prefix_length(hashes, held=held) == cached_prefix_by_probe(fast, hashes, held)
        for pool in self.pools:
            pool.check_invariants()

    def both(self, call: Any) -> Any:
        """Run ``call`` on each pool; both must return the same or raise the same error, a refusal changing nothing."""
        outcomes = []
        for pool in self.pools:
            before = observe(pool)
            try:
                outcomes.append(("ok", call(pool)))
            except (CapacityError, IllegalTransition, ValueError) as err:
                assert observe(pool) == before
                outcomes.append((type(err).__name__, str(err)))
        assert outcomes[0] == outcomes[1]
        return outcomes[0]

    def commit_chunks(self, holder: Holder, full: int, sizes: list[int]) -> None:
        """Commit ``holder``'s blocks up to ``full`` in chunks of ``sizes`` (cycled), as prefill chunks would."""
        i = 0
        while holder.committed < full:
            n = min(full - holder.committed, sizes[i % len(sizes)])
            i += 1
            c = holder.committed
            if n == 1:
                event("a one-block commit")
            run = holder.blocks[c : c + n]
            if n >= self.pools[0].bulk_from and abs(run[-1] - run[0]) == n - 1 and len(set(run)) == n:
                event(f"a commit of consecutive ids, {'ascending' if run[-1] > run[0] else 'descending'}")
            for pool in self.pools:
                after = holder.blocks[c - 1] if c else pool.root(None)
                pool.commit(
                    holder.blocks[c : c + n], holder.hashes[c : c + n], holder.tokens[c * BS : (c + n) * BS], after, c
                )
            holder.committed = c + n

    def admit(self, tokens: list[int], sizes: list[int], flip: bool = False) -> None:
        """Admit a prompt; with ``flip`` its new blocks' table order is reversed (a run of descending ids)."""
        hashes: list[int] = []
        self.hasher.extend(hashes, tokens, self.hasher.root(None))
        tables: list[tuple[list[int], int] | None] = []
        for pool in self.pools:
            run = pool.match_run(hashes, tokens, pool.root(None))[: (len(tokens) - 1) // BS]
            need = (len(tokens) + BS - 1) // BS - len(run)
            if need + pool.count_evictable(run) > pool.num_free:
                tables.append(None)
                continue
            shared = pool.share_run(run)  # first, as the scheduler does: an allocation must not evict the run
            new = pool.allocate(need)
            tables.append((shared + (new[::-1] if flip else new), len(run)))
        assert tables[0] == tables[1]
        if tables[0] is None:
            return
        blocks, shared = tables[0]
        holder = Holder(tokens, blocks, hashes, shared)
        self.chains.append(hashes)
        self.commit_chunks(holder, len(tokens) // BS, sizes)
        self.holders.append(holder)

    def decode(self, which: int, new: list[int]) -> None:
        """Grow a request token by token: a block when it needs one, a one-block commit at each block edge."""
        holder = self.holders[which % len(self.holders)]
        for token in new:
            holder.tokens.append(token)
            if len(holder.tokens) > len(holder.blocks) * BS:
                got = self.both(lambda pool: pool.allocate(1) if len(holder.blocks) % 2 else [pool.allocate_one()])
                if got[0] != "ok":  # no room: the token is not decoded
                    holder.tokens.pop()
                    return
                holder.blocks += got[1]
            if len(holder.tokens) % BS == 0:
                self.hasher.extend(holder.hashes, holder.tokens, self.hasher.root(None))
                self.commit_chunks(holder, len(holder.tokens) // BS, [1])

    def churn(self, k: int) -> None:
        """Allocate ``k`` blocks (or fail alike) and release them at once: they go back free, a generation on."""
        got = self.both(lambda pool: pool.allocate(k))
        if got[0] == "ok":
            for pool in self.pools:
                pool.release(got[1], None)

    def release(self, which: int, hold: bool) -> None:
        holder = self.holders.pop(which % len(self.holders))
        step = self.in_flight[-1] if hold and self.in_flight else None
        for pool in self.pools:
            pool.release(holder.blocks, step)

    def bad_commit(self, which: int, kind: int) -> None:
        """A one-block commit that is refused: wrong lengths, a block not OWNED, or an unknown predecessor."""
        block = which % self.pools[0].num_blocks
        tokens = [1] * (BS + (kind == 0))
        after = self.pools[0].num_blocks if kind == 1 else -999
        self.both(lambda pool: pool.commit([block], [12345], tokens, after))


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    policy=st.sampled_from(EVICTION_POLICIES),
    num_blocks=st.integers(4, 40),
    weak=st.booleans(),
    bulk_from=st.sampled_from((BlockPool.bulk_from, 4, 2)),
    loop_up_to=st.sampled_from((BlockPool.loop_up_to, 3)),
    data=st.data(),
)
def test_fast_paths_end_where_the_general_path_does(
    policy: str, num_blocks: int, weak: bool, bulk_from: int, loop_up_to: int, data: st.DataObject
) -> None:
    fast = type("FastPool", (BlockPool,), {"bulk_from": bulk_from, "loop_up_to": loop_up_to})
    twins = Twins(policy, num_blocks, WEAK if weak else HASHER, fast)
    if policy == "pinned":
        pinned: list[int] = []
        twins.hasher.extend(pinned, list(PREFIXES[1]), twins.hasher.root(None))
        for pool in twins.pools:
            assert isinstance(pool.eviction, PinnedEviction)
            pool.eviction.pin(pinned)
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(
            st.sampled_from(
                (
                    *("admit", "admit", "repeat", "decode", "decode", "release"),
                    *("launch", "complete", "clear", "bad", "flood", "churn"),
                )
            )
        )
        if op == "admit":
            prefix = data.draw(st.sampled_from(PREFIXES))
            tail = data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=30))
            sizes = data.draw(st.lists(st.integers(1, 20), min_size=1, max_size=4))
            twins.admit([*prefix, *tail], sizes, data.draw(st.booleans()))
        elif op == "flood":  # fresh content as large as what can be handed out: chunks evicting cached runs
            if data.draw(st.booleans()):  # everyone lets go first: their full blocks stay cached, to be evicted
                while twins.holders:
                    twins.release(0, False)
            seed = data.draw(st.integers(0, 2**32 - 1))
            size = data.draw(st.integers(1, max(1, twins.pools[0].num_free)))
            tokens = np.random.default_rng(seed).integers(4, 1000, size * BS).tolist()
            sizes = data.draw(st.lists(st.integers(1, 40), min_size=1, max_size=3))
            twins.admit(tokens, sizes, data.draw(st.booleans()))
        elif op == "churn":  # blocks handed out and let go unwritten: generations that differ from their neighbours'
            k = data.draw(st.integers(1, max(1, twins.pools[0].num_free)))
            twins.churn(k)
        elif op == "repeat" and twins.holders:  # the same prompt again: its last full block is recomputed, a twin
            twins.admit(list(twins.holders[data.draw(st.integers(0, 99)) % len(twins.holders)].tokens), [1])
        elif op == "decode" and twins.holders:
            twins.decode(data.draw(st.integers(0, 99)), data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=6)))
        elif op == "release" and twins.holders:
            twins.release(data.draw(st.integers(0, 99)), data.draw(st.booleans()))
        elif op == "launch":
            twins.in_flight.append(twins.next_step)
            twins.next_step += 1
        elif op == "complete" and twins.in_flight:
            step = twins.in_flight.pop(0)
            for pool in twins.pools:
                pool.step_completed(step)
        elif op == "clear":
            for pool in twins.pools:
                pool.clear_cache()
        elif op == "bad":
            twins.bad_commit(data.draw(st.integers(0, 99)), data.draw(st.integers(0, 2)))
        twins.same()


@settings(max_examples=max(1, EXAMPLES // 5), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_short_lru_eviction_takes_what_the_array_path_takes(data: st.DataObject) -> None:
    """Runs and single releases, revivals (stale places) and evictions of any size: both LRUs pop the same blocks."""
    fast, general = LRUEviction(), GeneralLRU()
    free = list(range(200))
    for _ in range(data.draw(st.integers(1, 60))):
        op = data.draw(st.sampled_from(("add", "add_many", "remove", "remove_many", "pop_many", "pop_many")))
        held = fast.order()
        if op == "add" and free:
            block = free.pop(data.draw(st.integers(0, len(free) - 1)))
            for lru in (fast, general):
                lru.add(block, block, 0)
        elif op == "add_many" and free:
            run = data.draw(st.lists(st.sampled_from(free), min_size=1, max_size=80, unique=True))
            free = [b for b in free if b not in run]
            for lru in (fast, general):
                lru.add_many(np.array(run, dtype=np.int64), run, np.zeros(len(run), dtype=np.int64))
        elif op == "remove" and held:
            block = data.draw(st.sampled_from(held))
            free.append(block)
            for lru in (fast, general):
                lru.remove(block)
        elif op == "remove_many" and held:
            run = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=40, unique=True))
            free += run
            for lru in (fast, general):
                lru.remove_many(np.array(run, dtype=np.int64))
        elif op == "pop_many" and held:
            k = data.draw(st.integers(1, min(len(held), 100)))
            if 1 < k <= LRUEviction.few_up_to:
                event("a short eviction")
            taken = fast.pop_many(k)
            assert taken == general.pop_many(k) == held[:k]
            free += taken
        assert fast.order() == general.order()
        assert len(fast) == len(general)


@settings(max_examples=max(1, EXAMPLES // 5), deadline=None)
@given(
    size=st.integers(1, 300),
    lo=st.integers(0, 50),
    n=st.integers(0, 200),
    first=st.integers(-5, 1000),
    step=st.sampled_from((1, -1)),
)
def test_a_counted_run_is_written_alike_short_or_long(size: int, lo: int, n: int, first: int, step: int) -> None:
    """``_count_into`` writes a chunk from a range and a long run through numpy: both give the counted values."""
    hi = min(size, lo + n)
    lo = min(lo, hi)
    counters = array("q", range(size))
    want = counters.tolist()
    want[lo:hi] = [first + step * i for i in range(hi - lo)]
    if hi - lo > 64:
        event("a long run, through numpy")
    _count_into(counters, lo, hi, first, step)
    assert counters.tolist() == want
