"""Prefix-eviction policies against a brute-force model, and inside the scheduler."""

from __future__ import annotations

from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.machines import eviction as eviction_module
from tokensched.machines.eviction import (
    CostAwareEviction,
    EvictionPolicy,
    LFUEviction,
    LRUEviction,
    PinnedEviction,
    make_eviction,
)

Op = tuple[str, int]
ops = st.lists(
    st.tuples(st.sampled_from(["add", "add_many", "remove", "hit", "pop", "pop_many"]), st.integers(0, 11)), max_size=80
)


class Model:
    """Every evictable block with what decides its fate; the victim is found by scanning all of them."""

    def __init__(self, kind: str, pinned: frozenset[int] = frozenset()) -> None:
        self.kind = kind
        self.pinned = pinned
        self.blocks: dict[int, tuple[float, int]] = {}  # block -> (score, tick)
        self.hits: dict[int, int] = {}
        self.age = 0.0
        self.tick = 0

    def add(self, block: int, block_hash: int, depth: int) -> None:
        self.tick += 1
        hits = self.hits.get(block_hash, 0)
        value = {"lru": 0.0, "lfu": float(hits), "cost": (hits + 1) / (depth + 1)}[self.kind]
        pinned = block_hash in self.pinned
        self.blocks[block] = (float("inf") if pinned else self.age + value, self.tick)

    def pop(self) -> int:
        block = min(self.blocks, key=lambda b: self.blocks[b])
        score, _ = self.blocks.pop(block)
        if self.kind != "lru" and score != float("inf"):
            self.age = score
        return block


def drive(policy: EvictionPolicy, model: Model, sequence: list[Op]) -> None:
    for op, x in sequence:
        block, block_hash, depth = x, 100 + x % 5, x % 4  # a few contents shared by several blocks
        if op == "add" and block not in model.blocks:
            policy.add(block, block_hash, depth)
            model.add(block, block_hash, depth)
        elif op == "add_many":  # the blocks from x not yet held, in one call, in a scrambled order
            run = [b for b in (x, (x + 5) % 12, (x + 2) % 12, (x + 9) % 12) if b not in model.blocks]
            hashes = [100 + b % 5 for b in run]
            depths = [b % 4 for b in run]
            policy.add_many(np.array(run, dtype=np.int64), iter(hashes), np.array(depths, dtype=np.int64))
            for args in zip(run, hashes, depths, strict=True):
                model.add(*args)
        elif op == "remove" and block in model.blocks:
            policy.remove(block)
            del model.blocks[block]
        elif op == "hit":
            policy.hit(block_hash)
            model.hits[block_hash] = model.hits.get(block_hash, 0) + 1
        elif op == "pop" and model.blocks:
            assert policy.pop() == model.pop()
        elif op == "pop_many":
            k = min(1 + x % 4, len(model.blocks))
            assert policy.pop_many(k) == [model.pop() for _ in range(k)]
        assert len(policy) == len(model.blocks)
        assert all((b in policy) == (b in model.blocks) for b in range(12))
    assert sorted(policy.order()) == sorted(model.blocks)


@pytest.mark.parametrize("kind", ["lru", "lfu", "cost"])
@settings(max_examples=300, deadline=None)
@given(sequence=ops)
def test_policy_evicts_what_the_model_says(kind: str, sequence: list[Op]) -> None:
    drive(make_eviction(kind), Model(kind), sequence)


@settings(max_examples=300, deadline=None)
@given(sequence=ops)
def test_lru_compacting_its_stale_places_at_every_chance_keeps_the_order(sequence: list[Op]) -> None:
    """With no slack the LRU queue rebuilds itself whenever stale places outnumber live ones."""
    with patch.object(eviction_module, "_SLACK", 0):
        drive(LRUEviction(), Model("lru"), sequence)


# Revivals weighted up, so that most of a released run goes stale and the queue compacts with several runs in it.
churn_ops = st.lists(
    st.tuples(st.sampled_from(["add", "add_many", "remove", "remove", "remove", "pop"]), st.integers(0, 11)),
    min_size=20,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(sequence=churn_ops)
def test_lru_compacting_under_churn_keeps_the_whole_order(sequence: list[Op]) -> None:
    """The whole eviction order (not only the next victim) must be the model's after every operation."""
    with patch.object(eviction_module, "_SLACK", 0):
        lru, model = LRUEviction(), Model("lru")
        for op in sequence:
            drive(lru, model, [op])
            assert lru.order() == sorted(model.blocks, key=model.blocks.__getitem__)


def test_lru_queue_stays_bounded_under_revivals() -> None:
    """A block released, revived and released again many times leaves stale places that are dropped."""
    lru = LRUEviction()
    runs = np.arange(64, dtype=np.int64)
    for _ in range(500):
        lru.add_many(runs, iter(()), runs)
        lru.remove_many(runs[::2])
        lru.remove_many(runs[1::2])
    assert len(lru) == 0 and lru._entries <= eviction_module._SLACK + len(runs)
    lru.add(5, 0, 0)
    lru.add_many(np.array([7, 3], dtype=np.int64), iter(()), np.zeros(2, dtype=np.int64))
    assert lru.order() == [5, 7, 3] and lru.pop_many(2) == [5, 7] and lru.pop() == 3
    with patch.object(eviction_module, "_SLACK", 0):  # 4 stale places of 6: the next release compacts
        lru.add_many(np.array([9, 2, 7, 4, 5, 6], dtype=np.int64), iter(()), np.zeros(6, dtype=np.int64))
        lru.remove_many(np.array([2, 7, 5, 6], dtype=np.int64))
        lru.add(1, 0, 0)
        assert lru._entries == 3 and lru.order() == [9, 4, 1] and lru.peek(2) == [9, 4]
        assert lru.pop_many(3) == [9, 4, 1] and len(lru) == 0


@settings(max_examples=300, deadline=None)
@given(sequence=ops, pinned=st.sets(st.integers(100, 104), max_size=3))
def test_pinned_content_is_evicted_only_when_nothing_else_is_left(sequence: list[Op], pinned: set[int]) -> None:
    policy = PinnedEviction(LRUEviction(), cap=len(pinned))
    assert policy.pin(sorted(pinned)) == len(pinned)
    drive(policy, Model("lru", frozenset(pinned)), sequence)


def test_pinning_stops_at_the_cap() -> None:
    policy = PinnedEviction(LRUEviction(), cap=2)
    assert policy.pin([1, 2, 3]) == 2
    assert policy.pin([1, 4]) == 0


def test_lfu_ages_so_old_popularity_does_not_stay_forever() -> None:
    lfu = LFUEviction()
    for _ in range(3):
        lfu.hit(7)
    lfu.add(0, 7, 0)  # score 3
    lfu.add(1, 8, 0)  # score 0
    assert lfu.pop() == 1
    for block in (2, 3):  # newcomers with one hit each: age + 1 = 1, then 2, below the favourite's 3
        lfu.hit(block + 100)
        lfu.add(block, block + 100, 0)
        assert lfu.pop() == block
    lfu.hit(104)
    lfu.add(4, 104, 0)  # age 2 + 1 = 3: the aged newcomers have caught up, and the older favourite goes
    assert lfu.pop() == 0


def test_cost_aware_evicts_a_cold_shallow_block_before_a_warm_deep_one_and_chains_from_the_tail() -> None:
    cost = CostAwareEviction()
    for _ in range(4):
        cost.hit(50)  # the warm session's deep block has been reused
    cost.add(1, 50, 6)  # warm, depth 6: (4 + 1) / 7 = 0.71
    cost.add(2, 60, 1)  # cold, depth 1: 1 / 2 = 0.5
    cost.add(3, 61, 2)  # the same cold chain, one deeper: 1 / 3
    assert [cost.pop(), cost.pop(), cost.pop()] == [3, 2, 1]


def test_unknown_policy_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="lru, lfu, cost, pinned"):
        make_eviction("fifo")
    with pytest.raises(ValueError, match="prefix_eviction"):
        SchedulerConfig(num_blocks=8, prefix_eviction="fifo")  # type: ignore[arg-type]


def _serve(s: Scheduler, rid: str, prompt: list[int]) -> int:
    """Run one request alone to the end; returns its prefix-cache hit in tokens."""
    s.submit(RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=1))
    hit = -1
    while s.has_work:
        plan = s.plan()
        assert plan is not None
        for new in plan.new_requests:
            hit = new.num_cached_tokens
        s.complete(StepResult(plan.step_id, [[1] if x else [] for x in plan.sample]))
        s.check_invariants()
    return hit


def test_a_pinned_system_prompt_survives_traffic_that_evicts_it_under_lru() -> None:
    system = list(range(1, 17))  # 4 blocks of 4
    hits = {}
    for eviction in ("lru", "pinned"):
        config = SchedulerConfig(num_blocks=12, block_size=4, prefix_eviction=eviction, pinned_prefix_blocks=4)
        s = Scheduler(config, clock=lambda: 0.0)
        if eviction == "pinned":
            assert s.pin_prefix(system) == 4
        _serve(s, "first", [*system, 99])
        for i in range(4):  # other traffic, 8 blocks each, churns the cache
            _serve(s, f"other{i}", [200 + 40 * i + j for j in range(32)])
        hits[eviction] = _serve(s, "again", [*system, 98])
    assert hits == {"lru": 0, "pinned": 16}


def test_pin_prefix_needs_the_pinned_policy() -> None:
    s = Scheduler(SchedulerConfig(num_blocks=8), clock=lambda: 0.0)
    with pytest.raises(Exception, match="prefix_eviction='pinned'"):
        s.pin_prefix([1, 2, 3])
