"""Keyed block hashes, confirmed prefix matches, cache salts and the KV event hook."""

from __future__ import annotations

from collections.abc import Sequence
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult, prompt_match
from tokensched.errors import IllegalTransition
from tokensched.int_column import IntColumn
from tokensched.machines.blocks import BlockPool, BlockState
from tokensched.machines.prefix import BlockHasher, shared_prefix_blocks
from tokensched.policies import PrefixAwarePolicy


def make(**overrides: object) -> Scheduler:
    settings: dict[str, object] = {"num_blocks": 32, "block_size": 4, "max_batched_tokens": 64, "max_model_len": 512}
    settings.update(overrides)
    return Scheduler(SchedulerConfig.model_validate(settings), clock=lambda: 0.0)


def run(s: Scheduler, token: int = 5) -> None:
    while (plan := s.plan()) is not None:
        s.complete(StepResult(plan.step_id, [[token] if x else [] for x in plan.sample]))


def cached_at_admission(s: Scheduler, spec: RequestSpec) -> int:
    s.submit(spec)
    plan = s.plan()
    assert plan is not None and plan.new_requests[0].request_id == spec.request_id
    s.complete(StepResult(plan.step_id, [[5] if x else [] for x in plan.sample]))
    return plan.new_requests[0].num_cached_tokens


# ---------------------------------------------------------------- hashing
@given(
    tokens=st.lists(st.integers(0, 2**31 - 1), max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=4),
    salt=st.none() | st.text(min_size=1, max_size=5),
)
def test_hashes_do_not_depend_on_how_tokens_arrive(tokens: list[int], cuts: list[int], salt: str | None) -> None:
    """One vectorised pass, block by block, from a list or an int32 array: the same chain."""
    hasher = BlockHasher(4, secret=b"k")
    root = hasher.root(salt)
    whole: list[int] = []
    hasher.extend(whole, tokens, root)
    pieces: list[int] = []
    for cut in sorted(cuts):
        hasher.extend(pieces, tokens[:cut], root)
    hasher.extend(pieces, np.array(tokens, dtype=np.int32), root)
    assert pieces == whole and len(whole) == len(tokens) // 4


@given(
    tokens=st.lists(st.integers(0, 2**31 - 1), min_size=30, max_size=120),
    block_size=st.integers(1, 9),
    steps=st.lists(st.integers(1, 2), min_size=1, max_size=40),
    salt=st.none() | st.text(min_size=1, max_size=5),
)
def test_one_or_two_blocks_at_a_time_from_an_array_give_the_pure_python_chain(
    tokens: list[int], block_size: int, steps: list[int], salt: str | None
) -> None:
    """The short path's ``x_b`` from an int32 array (one dot product) is the pure-Python sum's, odd block sizes too.

    A decode extends a request's chain one block (or two) at a time from its
    int32 token buffer; the reference is the same extension from a list (the
    Python sum over the block's words) and the whole chain in one pass.
    """
    hasher = BlockHasher(block_size, secret=b"k")
    root = hasher.root(salt)
    array = np.array(tokens, dtype=np.int32)
    from_array: list[int] = []
    from_list: list[int] = []
    end = 0
    for step in steps:
        end = min(end + step * block_size, len(tokens))
        hasher.extend(from_array, array[:end], root)
        hasher.extend(from_list, tokens[:end], root)
        assert from_array == from_list
    whole: list[int] = []
    hasher.extend(whole, tokens[:end], root)
    assert from_array == whole and len(whole) == end // block_size


def test_hashes_are_keyed_salted_and_chained() -> None:
    tokens = list(range(12))
    chains = {}
    for name, secret, salt in (("a", b"one", None), ("b", b"two", None), ("c", b"one", "tenant")):
        hasher = BlockHasher(4, secret=secret)
        chains[name] = []
        hasher.extend(chains[name], tokens, hasher.root(salt))
    assert chains["a"] != chains["b"], "another secret gives other hashes"
    assert not set(chains["a"]) & set(chains["c"]), "another salt gives an unrelated chain"
    hasher = BlockHasher(4, secret=b"one")
    later: list[int] = []
    hasher.extend(later, [99, 1, 2, 3, *tokens[4:]], hasher.root(None))
    assert later[1] != chains["a"][1], "a block's hash names its whole prefix"


def test_process_secret_is_drawn_lazily_and_shared() -> None:
    a, b = BlockHasher(4), BlockHasher(4)
    assert a.root(None) == b.root(None)


def test_shared_prefix_blocks_on_lists_and_arrays() -> None:
    old = list(range(20))
    new = [*range(10), 99, *range(11, 20)]
    assert shared_prefix_blocks(old, new, 4) == 2
    assert shared_prefix_blocks(np.array(old, dtype=np.int32), np.array(new, dtype=np.int32), 4) == 2
    assert shared_prefix_blocks(np.array(old, dtype=np.int32), [*old, 1], 4) == 5


# --------------------------------------------------------- confirmation
def test_a_colliding_hash_is_a_miss_not_a_match() -> None:
    pool = BlockPool(4, block_size=2)
    root = pool.root(None)
    a = pool.allocate(2)
    pool.commit(a, [111, 222], [1, 2, 3, 4], root)
    assert pool.match_prefix([111, 222], [1, 2, 3, 4], root) == a
    assert pool.match_prefix([111, 222], [1, 2, 3, 9], root) == a[:1], "second block holds other tokens"
    assert pool.match_prefix([111, 222], [7, 2, 3, 4], root) == [], "first block holds other tokens"
    assert pool.match_prefix([111, 222], [1, 2, 3, 4], pool.root("other")) == [], "another salt"
    # A second request whose first block differs but whose second block collides in hash and tokens:
    b = pool.allocate(2)
    pool.commit(b, [333, 222], [8, 8, 3, 4], root)
    assert pool.state(b[1]) is BlockState.COMMITTED
    assert pool.match_prefix([333, 222], [8, 8, 3, 4], root) == b[:1], "its tail follows another prefix"


def test_a_duplicates_successors_stay_findable_after_it_is_freed() -> None:
    pool = BlockPool(6, block_size=2)
    root = pool.root(None)
    first = pool.allocate(1)
    pool.commit(first, [1], [1, 2], root)
    second = pool.allocate(2)  # computed the same first block concurrently, then went further
    pool.commit(second, [1, 2], [1, 2, 3, 4], root)
    pool.release(second, None)  # the duplicate is freed; its successor links to the indexed copy
    assert pool.state(second[0]) is BlockState.FREE
    assert pool.match_prefix([1, 2], [1, 2, 3, 4], root) == [first[0], second[1]]


def test_an_evicted_parent_orphans_its_successors() -> None:
    pool = BlockPool(3, block_size=1)
    root = pool.root(None)
    blocks = pool.allocate(2)
    pool.commit(blocks, [10, 20], [1, 2], root)
    pool.release(blocks, None)
    pool.share(blocks[1:])
    pool.release(blocks[1:], None)  # the tail was used last: the parent is evicted first
    assert pool.allocate(1) == [2]
    fresh = pool.allocate(1)
    assert fresh == blocks[:1] and pool.state(blocks[1]) is BlockState.EVICTABLE
    pool.commit(fresh, [10], [9], root)  # new content whose hash collides with the old parent's
    assert pool.match_prefix([10, 20], [9, 2], root) == fresh, "the old tail was computed after token 1, not 9"


def test_commit_refuses_bad_input_and_changes_nothing() -> None:
    pool = BlockPool(4, block_size=2)
    root = pool.root(None)
    blocks = pool.allocate(2)
    with pytest.raises(ValueError, match="needs 2 hashes and 4 tokens"):
        pool.commit(blocks, [1, 2], [1, 2, 3], root)
    with pytest.raises(IllegalTransition):
        pool.commit([blocks[0], 3], [1, 2], [1, 2, 3, 4], root)
    assert [pool.state(b) for b in blocks] == [BlockState.OWNED, BlockState.OWNED]
    pool.check_invariants()


# ------------------------------------------------------------ cache_salt
def test_cache_salt_separates_tenants_and_shares_within_one() -> None:
    s = make()
    prompt = list(range(1, 18))
    assert cached_at_admission(s, RequestSpec(request_id="a", prompt_token_ids=prompt, max_tokens=1)) == 0
    run(s)
    salted = RequestSpec(request_id="b", prompt_token_ids=prompt, max_tokens=1, cache_salt="tenant")
    assert cached_at_admission(s, salted) == 0, "another salt never shares KV"
    run(s)
    same = RequestSpec(request_id="c", prompt_token_ids=prompt, max_tokens=1, cache_salt="tenant")
    assert cached_at_admission(s, same) == 16
    unsalted = RequestSpec(request_id="d", prompt_token_ids=prompt, max_tokens=1)
    run(s)
    assert cached_at_admission(s, unsalted) == 16
    s.check_invariants()


def test_a_session_turn_under_another_salt_rehashes() -> None:
    s = make()
    prompt = list(range(1, 18))
    s.submit(RequestSpec(request_id="a", prompt_token_ids=prompt, max_tokens=1, session_id="x"))
    run(s)
    turn = RequestSpec(request_id="b", prompt_token_ids=prompt, max_tokens=1, session_id="x", cache_salt="t")
    assert cached_at_admission(s, turn) == 0


def test_cache_salt_is_validated() -> None:
    with pytest.raises(ValueError, match="cache_salt"):
        RequestSpec(request_id="a", prompt_token_ids=[1], cache_salt="")


# ------------------------------------------------------------- KV events
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []

    def blocks_stored(
        self, block_hashes: list[int], parent_block_hash: int | None, token_ids: Sequence[int], block_size: int
    ) -> None:
        self.events.append(("stored", tuple(block_hashes), parent_block_hash, tuple(token_ids), block_size))

    def blocks_removed(self, block_hashes: list[int]) -> None:
        self.events.append(("removed", tuple(block_hashes)))

    def all_cleared(self) -> None:
        self.events.append(("cleared",))


def test_listener_hears_commits_evictions_and_clears() -> None:
    recorder = Recorder()
    pool = BlockPool(3, block_size=2, listener=recorder)
    root = pool.root(None)
    blocks = pool.allocate(2)
    pool.commit(blocks[:1], [1], [1, 2], root)
    pool.commit(blocks[1:], [2], [3, 4], blocks[0])
    twin = pool.allocate(1)
    pool.commit(twin, [1], [1, 2], root)  # the same content again: not findable anew, no event
    assert recorder.events == [("stored", (1,), None, (1, 2), 2), ("stored", (2,), 1, (3, 4), 2)]
    pool.release(twin, None)
    pool.release(blocks, None)
    recorder.events.clear()
    pool.allocate(2)  # one free block, then the LRU tail (hash 2)
    assert recorder.events == [("removed", (2,))]
    assert pool.clear_cache() == 1
    assert recorder.events[-1] == ("cleared",)


def test_scheduler_publishes_a_prompts_chain_once() -> None:
    recorder = Recorder()
    config = SchedulerConfig(num_blocks=32, block_size=4, max_batched_tokens=64, max_model_len=512)
    s = Scheduler(config, clock=lambda: 0.0, listener=recorder)
    s.submit(RequestSpec(request_id="a", prompt_token_ids=list(range(1, 10)), max_tokens=1))
    run(s)
    stored = [e for e in recorder.events if e[0] == "stored"]
    assert stored == [("stored", tuple(_chain(s, range(1, 9))), None, tuple(range(1, 9)), 4)]


def test_a_long_runs_stored_event_carries_its_tokens_as_a_lazy_column() -> None:
    """A run of bulk_from blocks or more hands a column that builds no list until read, with the same tokens."""
    recorder, seen = Recorder(), []
    config = SchedulerConfig(num_blocks=256, block_size=4, max_batched_tokens=512, max_model_len=1024)
    s = Scheduler(config, clock=lambda: 0.0, listener=recorder)
    stored = recorder.blocks_stored
    recorder.blocks_stored = lambda h, p, t, b: (seen.append(t), stored(h, p, t, b))  # type: ignore[method-assign, func-returns-value]
    prompt = range(1, 4 * s.pool.bulk_from + 2)
    s.submit(RequestSpec(request_id="a", prompt_token_ids=list(prompt), max_tokens=1))
    run(s)
    assert any(isinstance(t, IntColumn) for t in seen)
    events = [e for e in recorder.events if e[0] == "stored"]
    assert events == [("stored", tuple(_chain(s, prompt[: 4 * s.pool.bulk_from])), None, tuple(prompt[:-1]), 4)]


def _chain(s: Scheduler, tokens: range) -> list[int]:
    hashes: list[int] = []
    s.hasher.extend(hashes, list(tokens), s.hasher.root(None))
    return hashes


def test_decode_fills_commit_in_one_batch_with_the_chain_a_prefill_would_give() -> None:
    recorder = Recorder()
    config = SchedulerConfig(num_blocks=32, block_size=4, max_batched_tokens=64, max_model_len=512)
    s = Scheduler(config, clock=lambda: 0.0, listener=recorder)
    s.submit(RequestSpec(request_id="a", prompt_token_ids=[1, 2, 3], max_tokens=9))
    s.submit(RequestSpec(request_id="b", prompt_token_ids=[1, 2, 3, 4, 5], max_tokens=9, cache_salt="t"))
    history = {"a": [1, 2, 3], "b": [1, 2, 3, 4, 5]}
    token = 10
    while (plan := s.plan()) is not None:
        rows = []
        for rid, sample in zip(plan.request_ids, plan.sample, strict=True):
            rows.append([token] if sample else [])
            if sample:
                history[rid].append(token)
            token += 1
        s.complete(StepResult(plan.step_id, rows))
        s.check_invariants()
    for rid, salt in (("a", None), ("b", "t")):
        hashes: list[int] = []
        s.hasher.extend(hashes, history[rid][:-1], s.hasher.root(salt))  # the last token is never computed
        stored = [e for e in recorder.events if e[0] == "stored" and e[1][0] in hashes]
        assert [h for e in stored for h in e[1]] == hashes
        parents = [e[2] for e in stored]
        assert parents == [None, *(e[1][-1] for e in stored[:-1])], "each event chains after the one before"
        tokens = [t for e in stored for t in e[3]]
        assert tokens == history[rid][: len(hashes) * 4]
        again = f"{rid}2"
        s.submit(RequestSpec(request_id=again, prompt_token_ids=history[rid][:-1], max_tokens=1, cache_salt=salt))
        plan = s.plan()
        assert len(hashes) * 4 < len(history[rid]) - 1
        assert plan is not None and plan.new_requests[0].num_cached_tokens == len(hashes) * 4
        s.complete(StepResult(plan.step_id, [[1] if x else [] for x in plan.sample]))
        run(s)


def test_a_shared_block_let_go_first_by_a_step_in_flight_waits_for_that_step() -> None:
    """Found by the scheduler state machine: the last releaser was idle, the first was in step 8."""
    pool = BlockPool(2, block_size=1)
    root = pool.root(None)
    block = pool.allocate(1)
    pool.commit(block, [1], [5], root)
    pool.share(block)  # a second request holds it too
    pool.release(block, hold_until_step=8)  # the first lets go while step 8 still reads it
    pool.release(block, hold_until_step=None)  # the second, in no step, lets go last
    assert pool.state(block[0]) is BlockState.PENDING
    assert pool.allocate(1) != block, "handed out while step 8 may still read it"
    pool.step_completed(7)
    assert pool.state(block[0]) is BlockState.PENDING
    pool.step_completed(8)
    assert pool.state(block[0]) is BlockState.EVICTABLE
    pool.check_invariants()


# ------------------------------------------- taking over an earlier request's blocks
class PositionHasher(BlockHasher):
    """A block's hash is its position: every prompt's blocks collide with every other's, and only tokens differ."""

    def extend(self, hashes: list[int], tokens: object, root: int) -> None:
        hashes.extend(range(len(hashes) + 1, len(tokens) // self.block_size + 1))  # type: ignore[arg-type]

    def next_hashes(self, parents: Sequence[int], blocks: np.ndarray) -> list[int]:  # type: ignore[type-arg]
        return [p + 1 for p in parents]


def test_a_recent_run_is_taken_over_exactly_as_far_as_the_tokens_agree() -> None:
    bs, n = 4, 80 * 4  # 80 blocks: a long run, remembered when its request finishes
    s = Scheduler(
        SchedulerConfig(num_blocks=400, block_size=bs, max_batched_tokens=1024, max_model_len=2048),
        clock=lambda: 0.0,
        hasher=PositionHasher(bs, secret=b"t"),
    )
    first = list(range(1, n + 1))
    s.submit(RequestSpec(request_id="a", prompt_token_ids=first, max_tokens=1))
    plan = s.plan()
    assert plan is not None
    blocks_of_a = plan.new_requests[0].block_ids
    s.complete(StepResult(plan.step_id, [[5]]))
    # Shares 50 blocks and 2 tokens with "a", then differs: exactly those 50 blocks are taken over.
    second = [*first[: 50 * bs + 2], *range(10_000, 10_000 + n - 50 * bs - 2)]
    s.submit(RequestSpec(request_id="b", prompt_token_ids=second, max_tokens=1))
    plan = s.plan()
    assert plan is not None
    assert plan.new_requests[0].num_cached_tokens == 50 * bs
    assert plan.new_requests[0].block_ids[:50] == blocks_of_a[:50]
    s.complete(StepResult(plan.step_id, [[5]]))
    # Same hashes everywhere, no token in common: nothing is shared.
    assert cached_at_admission(s, RequestSpec(request_id="c", prompt_token_ids=[7] * n, max_tokens=1)) == 0
    s.check_invariants()


@given(
    shared=st.lists(st.integers(0, 9), max_size=24),
    first_tail=st.lists(st.integers(0, 9), max_size=12),
    second_tail=st.lists(st.integers(0, 9), min_size=1, max_size=12),
    salts=st.sampled_from([(None, None), ("x", "x"), (None, "x")]),
)
def test_a_prompt_repeating_a_recent_run_takes_over_exactly_the_hashes_and_blocks_it_would_find(
    shared: list[int], first_tail: list[int], second_tail: list[int], salts: tuple[str | None, str | None]
) -> None:
    """The taken-over hashes are the ones hashing would give, and the blocks the ones the index confirms."""
    s = make(num_blocks=64)
    with patch.object(prompt_match, "MIN_REUSE_BLOCKS", 1):  # every finished request is a recent run
        first = [1, *shared, *first_tail]
        s.submit(RequestSpec(request_id="a", prompt_token_ids=first, max_tokens=1, cache_salt=salts[0]))
        run(s)
        second = [1, *shared, *second_tail]
        s.submit(RequestSpec(request_id="b", prompt_token_ids=second, max_tokens=1, cache_salt=salts[1]))
    request = s.live["b"]
    fresh: list[int] = []
    s.matcher.hasher.extend(fresh, second, s.matcher.root(salts[1])[0])
    assert request.block_hashes == fresh
    confirmed = s.pool.match_prefix(fresh, second, s.matcher.root(salts[1])[1])
    taken = [] if request.reuse_run is None else request.reuse_run[0].tolist()
    assert taken == confirmed, "the run taken over is exactly what the index confirms (nothing was evicted)"
    run(s)
    s.check_invariants()


def test_a_session_turn_does_not_take_over_blocks_handed_out_since() -> None:
    bs = 4
    s = make(num_blocks=24, max_batched_tokens=256)
    history = list(range(1, 41))  # 10 blocks
    assert (
        cached_at_admission(s, RequestSpec(request_id="t0", prompt_token_ids=history, max_tokens=1, session_id="s"))
        == 0
    )
    run(s)
    # Another request takes every free and cached block: the session's blocks are evicted and reused.
    assert (
        cached_at_admission(s, RequestSpec(request_id="x", prompt_token_ids=list(range(500, 588)), max_tokens=1)) == 0
    )
    run(s)
    turn = [*history, 5, 9, 9, 9]
    spec = RequestSpec(request_id="t1", prompt_token_ids=turn, max_tokens=1, session_id="s")
    assert cached_at_admission(s, spec) < len(history) // bs * bs
    s.check_invariants()


def test_several_listeners_share_the_pools_one_slot_and_can_leave_it() -> None:
    first, second = Recorder(), Recorder()
    pool = BlockPool(3, block_size=2, listener=first)
    pool.add_listener(second)
    blocks = pool.allocate(1)
    pool.commit(blocks, [1], [1, 2], pool.root(None))
    assert first.events == second.events == [("stored", (1,), None, (1, 2), 2)]
    pool.remove_listener(first)
    assert pool.listener is second
    pool.release(blocks, None)
    assert pool.clear_cache() == 1
    assert first.events == [("stored", (1,), None, (1, 2), 2)] and second.events[-1] == ("cleared",)
    pool.remove_listener(second)
    assert pool.listener is None
    with pytest.raises(ValueError, match="does not listen"):
        pool.remove_listener(second)


def test_a_prefix_aware_scheduler_and_a_kv_event_publisher_both_hear_the_pool() -> None:
    recorder = Recorder()
    config = SchedulerConfig(num_blocks=32, block_size=4, max_batched_tokens=9, max_model_len=512)
    s = Scheduler(config, policy=PrefixAwarePolicy(), clock=lambda: 0.0, listener=recorder)
    s.submit(RequestSpec(request_id="a", prompt_token_ids=list(range(1, 10)), max_tokens=1))
    s.submit(RequestSpec(request_id="b", prompt_token_ids=[50, *range(2, 10)], max_tokens=1))
    s.submit(RequestSpec(request_id="c", prompt_token_ids=list(range(1, 13)), max_tokens=1))
    plan = s.plan()  # admits a (b and c wait: the budget is spent)
    assert plan is not None and [n.request_id for n in plan.new_requests] == ["a"]
    assert [r.request_id for r in s.waiting] == ["b", "c"]
    s.complete(StepResult(plan.step_id, [[7]]))  # a's two full blocks are committed: c's cached prefix grows
    assert recorder.events and recorder.events[0][0] == "stored"
    assert [r.request_id for r in s.waiting] == ["c", "b"]  # c now leads: 8 cached tokens against none
    s.check_invariants()
