"""Prefix hit rate of multi-turn sessions through SGLang Model Gateway: cache-aware vs round robin.

Starts a cluster of ``--replicas`` simulated replicas behind ``smg launch``
for each router policy, runs the same multi-turn sessions through it
(``tokensched.cluster.sessions``: each turn's prompt extends the last), and
prints the hit rate the replicas report (cached prompt tokens over prompt
tokens, turns after each session's first) next to one replica serving the
same sessions alone. Needs the ``cluster`` extra (smg).

    .venv/bin/python bench/bench_cluster.py [--replicas 3] [--sessions 12] [--turns 5] [--policies a,b]
"""

from __future__ import annotations

import argparse
import sys
import time

from tokensched.cluster import Cluster, ClusterSpec, RouterPolicy, find_smg
from tokensched.cluster.sessions import SessionWorkload, run_sessions


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=12)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--policies", default="cache_aware,round_robin,consistent_hashing,power_of_two,random")
    args = parser.parse_args()
    if find_smg() is None:
        print("smg is not installed (pip install 'tokensched[cluster]'); skipping")
        return 0
    serve_args = ("--realtime", "0")

    def workload(name: str) -> SessionWorkload:
        return SessionWorkload(name=name, sessions=args.sessions, turns=args.turns, concurrency=args.concurrency)

    rows: list[tuple[str, int, float, int, float]] = []
    with Cluster(ClusterSpec(replicas=1, router=RouterPolicy.ROUND_ROBIN, serve_args=serve_args)) as single:
        started = time.perf_counter()
        report = run_sessions(single.replicas[0].url, workload("single"))
        rows.append(("one replica, no gateway", 1, report.hit_rate, len(report.failed), time.perf_counter() - started))
    baseline = rows[0][2]
    for policy in args.policies.split(","):
        spec = ClusterSpec(replicas=args.replicas, router=RouterPolicy(policy.strip()), serve_args=serve_args)
        with Cluster(spec) as cluster:
            started = time.perf_counter()
            report = run_sessions(cluster.url, workload(policy))
            rows.append((policy, args.replicas, report.hit_rate, len(report.failed), time.perf_counter() - started))
    print(f"{args.sessions} sessions x {args.turns} turns, {args.concurrency} at a time, sim replicas (--realtime 0)")
    print(f"{'router':<26}{'replicas':>9}{'hit rate':>10}{'of single':>11}{'failed':>8}{'wall s':>8}")
    for name, replicas, rate, failed, wall in rows:
        print(f"{name:<26}{replicas:>9}{rate:>10.1%}{rate / baseline if baseline else 0:>11.1%}{failed:>8}{wall:>8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
