"""The simulated gateway's policies choose as smg's do: turn order, load, session stickiness, prefix affinity."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokensched.cluster.router import SimRouter
from tokensched.cluster.spec import RouterPolicy


def test_round_robin_takes_replicas_in_turn() -> None:
    router = SimRouter(RouterPolicy.ROUND_ROBIN, 3)
    assert [router.choose(None, (), [0, 0, 0]) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_least_load_takes_the_emptiest_replica() -> None:
    assert SimRouter(RouterPolicy.LEAST_LOAD, 3).choose(None, (), [5, 1, 3]) == 1


@given(st.lists(st.integers(0, 100), min_size=2, max_size=6))
def test_power_of_two_never_takes_the_busiest_of_several_unless_tied(loads: list[int]) -> None:
    chosen = SimRouter(RouterPolicy.POWER_OF_TWO, len(loads)).choose(None, (), loads)
    assert loads[chosen] <= sorted(loads)[-2]  # it compares two distinct replicas and keeps the lighter


@given(st.text(min_size=1, max_size=20))
def test_consistent_hashing_keeps_a_session_on_one_replica_whatever_the_load(session: str) -> None:
    router = SimRouter(RouterPolicy.CONSISTENT_HASHING, 5)
    first = router.choose(session, (), [0] * 5)
    assert all(router.choose(session, (), [9, 0, 3, 1, 7]) == first for _ in range(3))


def test_consistent_hashing_spreads_sessions_over_every_replica() -> None:
    router = SimRouter(RouterPolicy.CONSISTENT_HASHING, 4)
    counts = [0] * 4
    for i in range(400):
        counts[router.choose(f"session-{i}", (), [0] * 4)] += 1
    assert min(counts) > 50  # 160 virtual nodes each: no replica starves


def test_cache_aware_follows_a_sessions_prefix_while_load_is_balanced() -> None:
    router = SimRouter(RouterPolicy.CACHE_AWARE, 3)
    first = router.choose("s", [1, 2, 3], [0, 0, 0])
    router.choose("t", [7, 8, 9], [0, 0, 0])
    assert router.choose("s", [1, 2, 3, 4], [0, 2, 2]) == first  # 3 of 4 blocks matched (> 0.3), though busier
    assert router.decisions["cache_hit"] == 1


def test_cache_aware_below_the_threshold_goes_to_the_least_loaded() -> None:
    router = SimRouter(RouterPolicy.CACHE_AWARE, 2, cache_threshold=0.5)
    router.choose("s", [1], [0, 0])  # replica 0 (least loaded, ties by index)
    assert router.choose("s", [1, 2, 3], [0, 0]) == 1  # 1 of 3 blocks: not enough, and replica 1's tree is smaller
    assert router.decisions == {"cache_hit": 0, "cache_miss": 2, "balance": 0}


def test_cache_aware_gives_up_affinity_when_load_is_imbalanced() -> None:
    router = SimRouter(RouterPolicy.CACHE_AWARE, 2)
    assert router.choose("s", [1, 2], [0, 0]) == 0
    # 100 vs 10 in flight: over 64 apart and over 1.5x, so shortest queue wins over the prefix on replica 0
    assert router.choose("s", [1, 2, 3], [100, 10]) == 1
    assert router.decisions["balance"] == 1


def test_a_bad_router_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one replica"):
        SimRouter(RouterPolicy.ROUND_ROBIN, 0)
    with pytest.raises(ValueError, match="prefix_hash is not simulated"):
        SimRouter(RouterPolicy.PREFIX_HASH, 2)


@given(
    chains=st.lists(st.lists(st.integers(), max_size=6), min_size=1, max_size=12),
    loads=st.lists(st.lists(st.integers(0, 9), min_size=4, max_size=4), min_size=12, max_size=12),
)
def test_only_the_cache_aware_router_reads_the_hash_chain(chains: list[list[int]], loads: list[list[int]]) -> None:
    """Routers that say they do not read the chain choose the same replicas given an empty one (callers skip it)."""
    for policy in RouterPolicy:
        if policy is RouterPolicy.PREFIX_HASH:
            continue
        with_chain, without = SimRouter(policy, 4, seed=3), SimRouter(policy, 4, seed=3)
        assert with_chain.reads_block_hashes == (policy is RouterPolicy.CACHE_AWARE)
        if with_chain.reads_block_hashes:
            continue
        for i, chain in enumerate(chains):
            session = f"s{i % 3}"
            assert with_chain.choose(session, chain, loads[i]) == without.choose(session, (), loads[i])
