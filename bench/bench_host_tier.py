"""Device-only vs device + host KV tier on the coding-agent workload: the load at which p50 TTFT crosses 1 s.

Runs :func:`tokensched.benchmark.run.run_bench` at each offered load with the
same sessions (one seed), the same profile and the same simulated hardware,
once per host capacity (``BenchConfig.host_kv_gb``; 0 is device only), and
prints a Markdown table per load (prefix hit rate, p50/p99 TTFT, p50 TPS/user,
host blocks loaded) and the crossing table: the load at which p50 TTFT first
reaches the target, linearly interpolated between the levels run.

    .venv/bin/python bench/bench_host_tier.py [--policy vllm] [--host-kv-gb 0 500 2000]
        [--tpm 500000 750000 1000000 1250000 1500000 2000000] [--duration 240] [--link pcie5-x16]
"""

from __future__ import annotations

import argparse
import math

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.host_tier import crossing
from tokensched.benchmark.run import run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--policy", default="vllm", help="bench profile (tokensched.benchmark.profiles)")
    parser.add_argument("--host-kv-gb", type=float, nargs="+", default=[0.0, 500.0, 2000.0])
    parser.add_argument(
        "--tpm", type=float, nargs="+", default=[500_000.0, 750_000.0, 1_000_000.0, 1_250_000.0, 1_500_000.0, 2e6]
    )
    parser.add_argument("--duration", type=float, default=240.0, help="end of the measured arrivals (s)")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--drain", type=float, default=30.0)
    parser.add_argument("--link", default="pcie5-x16", choices=["pcie5-x16", "nvlink-c2c"])
    parser.add_argument("--ttft-target", type=float, default=1.0, help="p50 TTFT whose crossing is reported (s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    levels = sorted(args.tpm)
    print(
        f"coding-agent workload, {args.policy} profile, Kimi-K2.5-class on 4x B200 (sim), host link {args.link}, "
        f"{args.duration:.0f} s (warm-up {args.warmup:.0f} s), seed {args.seed}"
    )
    print("| host KV (GB) | input TPM | prefix hit rate | TTFT p50 (s) | TTFT p99 (s) | TPS/user p50 | overloaded |")
    print("|---|---|---|---|---|---|---|")
    p50s: dict[float, list[float]] = {}
    for gb in args.host_kv_gb:
        for tpm in levels:
            config = BenchConfig(
                policy=args.policy,
                target_tpm=tpm,
                duration_s=args.duration,
                warmup_s=args.warmup,
                drain_s=args.drain,
                seed=args.seed,
                host_kv_gb=gb,
                host_link=args.link,
            )
            result, _ = run_bench(config)
            m = result.metrics
            p50s.setdefault(gb, []).append(m.ttft_s.p50)
            print(
                f"| {gb:,.0f} | {tpm:,.0f} | {m.prefix_cache_hit_rate:.3f} | {m.ttft_s.p50:.2f} | {m.ttft_s.p99:.2f} "
                f"| {m.tps_per_user.p50:.1f} | {'yes' if m.overloaded else 'no'} |",
                flush=True,
            )
    print()
    print(f"| host KV (GB) | input TPM at which p50 TTFT crosses {args.ttft_target:g} s |")
    print("|---|---|")
    for gb, values in p50s.items():
        at = crossing(levels, [v if not math.isnan(v) else math.inf for v in values], args.ttft_target)
        where = f"{at:,.0f}" if at is not None else f"not within {levels[-1]:,.0f}"
        print(f"| {gb:,.0f} | {where} |")


if __name__ == "__main__":
    main()
