"""Prefix-cache hit rate and TTFT per eviction policy on the coding-agent workload (simulated GPU).

Runs :func:`tokensched.benchmark.eviction.compare_evictions`: the vLLM profile
(FCFS and vLLM's defaults) once per eviction policy, the same sessions (one
seed) and deployment, changing only ``SchedulerConfig.prefix_eviction``. Every
session opens with the same system prompt (``--system-prompt`` tokens, 16,384
by default), which ``pinned`` pins with ``Scheduler.pin_prefix`` (capped at
its full blocks); prints a Markdown table. ``tokensched bench --eviction``
runs the same comparison from the command line (with its own defaults: fp8
KV, 30 s drain).

    .venv/bin/python bench/bench_eviction.py [--duration 600] [--tpm 800000 1000000 1200000]
"""

from __future__ import annotations

import argparse

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.eviction import EVICTION_POLICIES, SYSTEM_PROMPT_TOKENS, compare_evictions, markdown_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=600.0, help="end of the measured arrivals (s)")
    parser.add_argument("--warmup", type=float, default=120.0)
    # Around the deployment's knee: far below it the cache holds every session, far above it thrashes whatever
    # the order.
    parser.add_argument("--tpm", type=float, nargs="+", default=[800_000.0, 1_000_000.0, 1_200_000.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--system-prompt", type=int, default=SYSTEM_PROMPT_TOKENS, help="shared prefix tokens")
    parser.add_argument("--eviction", nargs="+", default=list(EVICTION_POLICIES), choices=EVICTION_POLICIES)
    args = parser.parse_args()
    base = BenchConfig(policy="vllm", duration_s=args.duration, warmup_s=args.warmup, seed=args.seed)
    print(
        f"coding-agent workload, vLLM profile, {args.duration:.0f} s (warm-up {args.warmup:.0f} s), seed {args.seed}, "
        f"a {args.system_prompt:,}-token system prompt shared by every session"
    )
    report = compare_evictions(base, args.tpm, args.eviction, args.system_prompt)
    print(markdown_table(report))


if __name__ == "__main__":
    main()
