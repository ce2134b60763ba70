"""Cutting runs in one move a request, long runs scanned until they wait long enough to be indexed, vs every
run indexed hash by hash and one move a removed hash: PrefixKeys ends in the same state.

:meth:`PrefixKeys._cut_runs` moves each request whose run lost blocks once,
to its final length, and leaves a long run out of the hash index for its first
flushes (:meth:`PrefixKeys._cut_unheld` scans it instead); the reference
below indexes every run when it is queued, walks the removed hashes one by
one and moves a request at each (what a flush did before). Two trackers, each with
its own queue, listen to one pool under random traffic (requests of shared
prefixes queued and dropped, blocks computed and committed, released, evicted
by allocations, the cache cleared); after every flush their tracked lengths,
holder and frontier indexes, keys, queue order and whether the order moved
must be equal, and each must match a fresh walk of the index.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched.config import RequestSpec
from tokensched.errors import CapacityError
from tokensched.machines.blocks import BlockPool
from tokensched.machines.prefix import BlockHasher
from tokensched.machines.request import Request
from tokensched.policies import PrefixAwarePolicy
from tokensched.policies.base import SortKey
from tokensched.prefix_keys import PrefixKeys
from tokensched.queue import WaitingQueue

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 2
PREFIXES = ((), (1, 2, 3, 4), (1, 2, 3, 4, 5, 6, 7, 8), (9, 9, 9, 9, 9, 9))


class WeakHasher(BlockHasher):
    """Five hash values in all: chains repeat hashes (a request's run holds one hash at several places)."""

    def extend(self, hashes: list[int], tokens: object, root: int) -> None:
        start = len(hashes)
        super().extend(hashes, tokens, root)  # type: ignore[arg-type]
        hashes[start:] = [h % 5 for h in hashes[start:]]


class OneByOneKeys(PrefixKeys):
    """The reference: every run indexed hash by hash from the start; each removed hash cuts the runs holding it
    there and then, one move each."""

    def add(self, request: Request) -> SortKey:
        key = super().add(request)
        if self._unheld.pop(request, None) is not None:
            self._hold_run(request, request.block_hashes, 0, self._matched[request])
        return key

    def _cut_runs(self, removed: list[int], changed: set[Request]) -> None:
        holders = self._holders
        for h in removed:
            if h not in holders or self._pool.indexed(h):
                continue
            held = holders[h]
            for request, cut in [held] if isinstance(held, tuple) else list(held.items()):
                if cut < self._matched[request]:
                    self._move(request, cut, changed)


class SoonIndexed(PrefixKeys):
    """Long runs enter the hash index at their second scan (the shipped tracker waits longer): promotion is tested."""

    lazy_checks = 2


def tracked(keys: PrefixKeys, queue: WaitingQueue) -> tuple[object, ...]:
    """What the queue sees (each tracker's hash index is checked against a fresh walk by ``check``)."""
    return dict(keys._matched), dict(keys._waiters), dict(keys._keys), list(queue)


class Traffic:
    def __init__(self, num_blocks: int, hasher: BlockHasher) -> None:
        self.pool = BlockPool(num_blocks, BS)
        self.hasher = hasher
        self.queues = [WaitingQueue(False), WaitingQueue(False), WaitingQueue(False)]
        policy = PrefixAwarePolicy()
        self.keys = [
            cls(self.pool, queue, policy, lambda: 0.0, rekey=True)
            for cls, queue in zip((PrefixKeys, SoonIndexed, OneByOneKeys), self.queues, strict=True)
        ]
        for keys in self.keys:
            self.pool.add_listener(keys)
        self.waiting: list[Request] = []
        self.held: list[list[int]] = []
        self.seq = 0
        self.computed: list[list[int]] = []  # prompts cached, for requests that repeat and extend them

    def queue(self, tokens: list[int]) -> None:

        request = Request.from_spec(RequestSpec(request_id=f"r{self.seq}", prompt_token_ids=tokens), 0.0, self.seq)
        self.seq += 1
        self.hasher.extend(request.block_hashes, tokens, self.hasher.root(None))
        for keys, queue in zip(self.keys, self.queues, strict=True):
            queue.push(request, keys.add(request))
        self.waiting.append(request)
        if request in self.keys[0]._unheld:
            event("a long cached run left out of the hash index")

    def drop(self, which: int) -> None:
        request = self.waiting.pop(which % len(self.waiting))
        for keys, queue in zip(self.keys, self.queues, strict=True):
            keys.flush()
            queue.remove(request, keys.key_of(request))
            keys.discard(request)

    def compute(self, tokens: list[int]) -> None:
        """A request's prompt computed and cached: share what the index confirms, commit the rest."""
        pool = self.pool
        hashes: list[int] = []
        self.hasher.extend(hashes, tokens, self.hasher.root(None))
        run = pool.match_run(hashes, tokens, pool.root(None))
        need = len(hashes) - len(run)
        if need + pool.count_evictable(run) > pool.num_free:
            return
        blocks = pool.share_run(run) + pool.allocate(need)
        if need:
            after = blocks[len(run) - 1] if len(run) else pool.root(None)
            pool.commit(
                blocks[len(run) :], hashes[len(run) :], tokens[len(run) * BS : len(hashes) * BS], after, len(run)
            )
        self.held.append(blocks)
        self.computed.append(tokens)

    def evict(self, n: int) -> None:
        try:
            self.held.append(self.pool.allocate(n))
        except CapacityError:
            return

    def same(self) -> None:
        moved = [keys.flush() for keys in self.keys]
        assert moved[0] == moved[1] == moved[2]
        fast, soon, reference = (tracked(keys, queue) for keys, queue in zip(self.keys, self.queues, strict=True))
        assert fast == reference
        assert soon == reference
        for keys in self.keys:
            keys.check(self.waiting)


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(num_blocks=st.integers(8, 60), weak=st.booleans(), data=st.data())
def test_one_move_a_request_ends_where_one_move_a_hash_does(num_blocks: int, weak: bool, data: st.DataObject) -> None:
    traffic = Traffic(num_blocks, WeakHasher(BS, secret=b"cuts") if weak else BlockHasher(BS, secret=b"cuts"))
    for _ in range(data.draw(st.integers(1, 40))):
        op = data.draw(st.sampled_from(("queue", "queue", "drop", "compute", "compute", "release", "evict", "clear")))
        tokens = [*data.draw(st.sampled_from(PREFIXES)), *data.draw(st.lists(st.integers(1, 3), max_size=16))]
        if op == "queue" and traffic.computed and data.draw(st.booleans()):  # a next turn: a cached prompt, extended
            traffic.queue([*traffic.computed[data.draw(st.integers(0, 99)) % len(traffic.computed)], *tokens])
        elif op == "queue" and len(tokens) >= BS:
            traffic.queue(tokens)
        elif op == "drop" and traffic.waiting:
            traffic.drop(data.draw(st.integers(0, 99)))
        elif op == "compute" and len(tokens) >= BS:
            traffic.compute(tokens)
            if len(traffic.held) > 0 and data.draw(st.booleans()):  # finished at once: cached, held by nobody
                traffic.pool.release(traffic.held.pop(), None)
        elif op == "release" and traffic.held:
            traffic.pool.release(traffic.held.pop(data.draw(st.integers(0, 99)) % len(traffic.held)), None)
        elif op == "evict":  # up to every cached block nobody holds: the queued runs lose blocks
            traffic.evict(data.draw(st.integers(1, max(1, traffic.pool.num_free))))
            if len(traffic.held) > 0 and data.draw(st.booleans()):
                traffic.pool.release(traffic.held.pop(), None)
        elif op == "clear":
            traffic.pool.clear_cache()
        if op in ("evict", "compute") and any(traffic.keys[0]._unheld):
            event("the cache moved under an unindexed run")
        traffic.same()
