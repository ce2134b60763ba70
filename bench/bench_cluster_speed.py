"""Simulation speed of a large cluster: R replicas for a simulated hour, wall and CPU seconds.

.venv/bin/python bench/bench_cluster_speed.py [--replicas 16] [--hours 1] [--tpm-per-replica 1.2M]
"""

from __future__ import annotations

import argparse
import sys

from tokensched.benchmark import BenchConfig, format_level, parse_level
from tokensched.benchmark.cluster import ClusterSimConfig, run_cluster


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=16)
    parser.add_argument("--hours", type=float, default=1.0)
    parser.add_argument("--tpm-per-replica", default="1.2M", help="offered load per replica (input tokens/min)")
    parser.add_argument("--router", default="cache_aware")
    args = parser.parse_args()
    seconds = args.hours * 3600
    level = parse_level(args.tpm_per_replica) * args.replicas
    bench = BenchConfig(policy="prefix-aware", target_tpm=level, duration_s=seconds, warmup_s=60, drain_s=0)
    result = run_cluster(ClusterSimConfig(replicas=args.replicas, router=args.router, bench=bench))
    m = result.metrics
    print(
        f"{args.replicas} replicas x {seconds:,.0f} simulated s at {format_level(level)} TPM ({args.router}): "
        f"{result.wall_s:,.0f} s wall, {result.cpu_s:,.0f} s CPU "
        f"({result.sim_time_s / result.wall_s:,.1f} simulated s per wall s for the whole cluster; "
        f"{result.sim_time_s * args.replicas / result.cpu_s:,.0f} replica-seconds per CPU second)"
    )
    print(
        f"TTFT p50 {m.ttft_s.p50:.2f} s, p99 {m.ttft_s.p99:.2f} s; hit rate {m.prefix_cache_hit_rate:.1%}; "
        f"{sum(r.requests for r in result.replicas):,} requests"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
