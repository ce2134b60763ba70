"""The cluster simulation: every turn lands on one replica, routing changes the hit rate, runs repeat, PD transfers."""

from __future__ import annotations

import math

import pytest

from tokensched.benchmark import BenchConfig
from tokensched.benchmark.cluster import ClusterSimConfig, run_cluster
from tokensched.benchmark.disagg import LINK_BYTES_PER_S, DisaggConfig, run_disagg
from tokensched.cluster.spec import RouterPolicy

SHORT = BenchConfig(policy="prefix-aware", target_tpm=3e6, duration_s=60, warmup_s=20, drain_s=5)


@pytest.fixture(scope="module")
def by_router() -> dict[RouterPolicy, object]:
    return {
        router: run_cluster(ClusterSimConfig(replicas=3, router=router, bench=SHORT))
        for router in (RouterPolicy.CACHE_AWARE, RouterPolicy.ROUND_ROBIN)
    }


def test_every_turn_goes_to_exactly_one_replica_and_round_robin_spreads_them_evenly(by_router: dict) -> None:
    robin = by_router[RouterPolicy.ROUND_ROBIN]
    counts = [r.requests for r in robin.replicas]
    assert sum(counts) > 0 and max(counts) - min(counts) <= 1
    aware = by_router[RouterPolicy.CACHE_AWARE]
    decisions = aware.router_decisions
    assert sum(decisions.values()) == sum(r.requests for r in aware.replicas) + aware.requests_rejected


def test_cache_aware_routing_finds_more_of_each_prompt_cached_than_round_robin(by_router: dict) -> None:
    aware = by_router[RouterPolicy.CACHE_AWARE].metrics.prefix_cache_hit_rate
    robin = by_router[RouterPolicy.ROUND_ROBIN].metrics.prefix_cache_hit_rate
    print(f"3 replicas, 3M TPM, 60 s: cache-aware hit rate {aware:.1%}, round robin {robin:.1%}")
    assert aware > robin + 0.1


def test_one_seed_gives_one_result(by_router: dict) -> None:
    again = run_cluster(ClusterSimConfig(replicas=3, router=RouterPolicy.CACHE_AWARE, bench=SHORT))
    first = by_router[RouterPolicy.CACHE_AWARE]
    assert again.metrics == first.metrics and again.replicas == first.replicas


def test_disaggregation_prices_each_transfer_on_the_link_and_serves_every_turn() -> None:
    cluster = ClusterSimConfig(bench=SHORT)
    results = {
        link: run_disagg(DisaggConfig(prefill=1, decode=1, link=link, cluster=cluster)) for link in LINK_BYTES_PER_S
    }
    ib, nvlink = results["infiniband"], results["nvlink"]
    assert ib.transfers > 0 and ib.requests_rejected == 0
    # the same turns cross both links; time scales with the inverse of the bandwidth
    ratio = LINK_BYTES_PER_S["nvlink"] / LINK_BYTES_PER_S["infiniband"]
    assert ib.transfer_ms_mean == pytest.approx(nvlink.transfer_ms_mean * ratio, rel=0.2)
    m = ib.metrics
    assert not math.isnan(m.ttft_s.p50) and not math.isnan(m.itl_s.p50) and m.output_tps_per_gpu > 0
    assert sum(r.requests for r in ib.decode) <= sum(r.requests for r in ib.prefill)
