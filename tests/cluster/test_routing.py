"""Multi-turn sessions through the real gateway: prefix hits by policy, a replica killed mid-run, metrics.

Sim replicas run with ``--realtime 0`` (as fast as the CPU allows) except in
the fault test, which paces them so that requests are in flight when a
replica dies. The hit-rate figures are printed (``pytest -s`` shows them).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import cast

import httpx
import pytest

from tokensched.cluster import Cluster, ClusterSpec, RouterPolicy
from tokensched.cluster.sessions import SessionsReport, SessionWorkload, run_sessions

from .conftest import metric_sum, requires_smg, settle

pytestmark = requires_smg
FAST = ("--realtime", "0")


def _workload(name: str, **fields: object) -> SessionWorkload:
    return SessionWorkload(name=name, **{"sessions": 12, "turns": 5, "concurrency": 4, **fields})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cache_aware() -> Iterator[Cluster]:
    with Cluster(ClusterSpec(replicas=3, router=RouterPolicy.CACHE_AWARE, serve_args=FAST)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def round_robin() -> Iterator[Cluster]:
    with Cluster(ClusterSpec(replicas=3, router=RouterPolicy.ROUND_ROBIN, serve_args=FAST)) as cluster:
        yield cluster


def test_cache_aware_keeps_the_single_replica_hit_rate_and_round_robin_does_not(
    cache_aware: Cluster, round_robin: Cluster
) -> None:
    single = run_sessions(round_robin.replicas[0].url, _workload("single"))  # one replica, no gateway
    aware = run_sessions(cache_aware.url, _workload("aware"))
    robin = run_sessions(round_robin.url, _workload("robin"))
    for name, report in (("single replica", single), ("cache_aware x3", aware), ("round_robin x3", robin)):
        print(f"{name:<16} hit rate {report.hit_rate:6.1%}  ({report.hit_rate / single.hit_rate:6.1%} of single)")
    assert [r.failed for r in (single, aware, robin)] == [[], [], []]
    assert single.hit_rate > 0.5  # the workload is mostly shared prefix, so the comparison means something
    assert aware.hit_rate >= 0.9 * single.hit_rate
    assert robin.hit_rate <= 0.8 * single.hit_rate


def test_the_gateway_and_each_replica_agree_on_how_many_requests_each_served(cache_aware: Cluster) -> None:
    report = run_sessions(cache_aware.url, _workload("count", sessions=6, turns=2))
    assert report.failed == []

    def counts() -> tuple[list[float], list[float]]:
        members = cache_aware.replicas
        gateway = [metric_sum(cache_aware.metrics_url, "smg_worker_requests_total", worker=r.url) for r in members]
        replicas = [metric_sum(r.url + "/metrics", "tokensched:request_success_total") for r in members]
        return gateway, replicas

    gateway, replicas = settle(counts, lambda c: c[0] == c[1])  # type: ignore[index]
    assert gateway == replicas
    assert sum(replicas) >= len(report.ok) and all(n > 0 for n in replicas)
    chat = {"path": "/v1/chat/completions", "status_code": "200"}
    answered = metric_sum(cache_aware.metrics_url, "smg_http_responses_total", **chat)
    assert answered == sum(replicas)


def test_killing_a_replica_mid_run_loses_no_unstarted_request_and_moves_new_sessions_to_survivors() -> None:
    paced = ("--realtime", "1")  # the simulated H100's own speed: requests are in flight when the replica dies
    with Cluster(ClusterSpec(replicas=3, router=RouterPolicy.CACHE_AWARE, serve_args=paced)) as cluster:
        before: list[SessionsReport] = []
        running = threading.Thread(
            target=lambda: before.append(
                run_sessions(cluster.url, _workload("before", sessions=9, turns=6, concurrency=9, max_tokens=200))
            )
        )
        running.start()

        def in_flight() -> list[int]:
            loads = [httpx.get(r.url + "/v1/loads", timeout=5).json()["loads"][0] for r in cluster.replicas]
            return [int(load["num_running_reqs"] + load["num_waiting_reqs"]) for load in loads]

        # the victim is the replica running the most requests once the run is under way
        loads = cast(list[int], settle(in_flight, lambda n: max(cast(list[int], n)) >= 2, within_s=30))
        index = max(range(len(loads)), key=loads.__getitem__)
        started = loads[index]
        assert started > 0, loads
        victim = cluster.replicas[index]
        survivors = [r for r in cluster.replicas if r is not victim]
        started = max(started, in_flight()[index])  # read again just before the kill: requests keep arriving
        cluster.kill_replica(index)
        served_before = [metric_sum(r.url + "/metrics", "tokensched:request_success_total") for r in survivors]
        after = run_sessions(cluster.url, _workload("after", sessions=6, turns=3, concurrency=6, max_tokens=8))
        running.join(timeout=90)
        assert not running.is_alive(), "a client of the killed replica hung"

        print(f"victim had {started} in flight; {len(before[0].failed)} of {len(before[0].turns)} turns failed")
        # a request that had not started on the victim is not lost: only those it was running can fail
        assert len(before[0].failed) <= started, before[0].failed
        assert all(t.status in (0, 500, 502, 503) for t in before[0].failed)
        # new sessions all land on the survivors and are all answered
        assert after.failed == []
        served_after = [metric_sum(r.url + "/metrics", "tokensched:request_success_total") for r in survivors]
        assert sum(served_after) - sum(served_before) >= len(after.ok)
        assert victim.url not in settle(cluster.healthy_workers, lambda w: victim.url not in w)  # type: ignore[operator]
