"""Prefix-cache hit rate and TTFT per eviction policy on the coding-agent workload (simulated GPU).

Runs :func:`tokensched.benchmark.run.run_bench` once per eviction policy with
the vLLM profile (FCFS and vLLM's defaults), the same sessions (one seed) and
the same deployment, changing only ``SchedulerConfig.prefix_eviction``; prints
a Markdown table.

    .venv/bin/python bench/bench_eviction.py [--duration 600] [--tpm 800000 1000000 1200000]

``pinned`` is left out: it keeps prefixes that ``Scheduler.pin_prefix`` names,
and the benchmark's runner builds its scheduler without a hook to pin one (the
default workload has no shared system prompt to pin either); with nothing
pinned it is LRU.
"""

from __future__ import annotations

import argparse

import attrs

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import run_bench

POLICIES = ("lru", "lfu", "cost")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="end of the measured arrivals (s)")
    parser.add_argument("--warmup", type=float, default=120.0)
    # Around the deployment's knee: far below it the cache holds every session, far above it thrashes whatever
    # the order (on this deployment the hit rate is 0 with any policy from 1.5M TPM up).
    parser.add_argument("--tpm", type=float, nargs="+", default=[800_000.0, 1_000_000.0, 1_200_000.0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    base = PROFILES["vllm"]
    for name in POLICIES:  # one profile per eviction policy, registered for this process only
        PROFILES[f"vllm-{name}"] = attrs.evolve(
            base, name=f"vllm-{name}", settings={**base.settings, "prefix_eviction": name}
        )
    print(f"coding-agent workload, vLLM profile, {args.duration:.0f} s (warm-up {args.warmup:.0f} s), seed {args.seed}")
    print("| input TPM | eviction | prefix hit rate | TTFT p50 (s) | TTFT p90 (s) | preemptions | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for tpm in args.tpm:
        for name in POLICIES:
            config = BenchConfig(
                policy=f"vllm-{name}", target_tpm=tpm, duration_s=args.duration, warmup_s=args.warmup, seed=args.seed
            )
            result, _ = run_bench(config)
            m = result.metrics
            print(
                f"| {tpm:,.0f} | {name} | {m.prefix_cache_hit_rate:.3f} | {m.ttft_s.p50:.2f} | {m.ttft_s.p90:.2f} "
                f"| {m.num_preemptions} | {result.run.wall_s:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
