"""Co-located vs prefill/decode-disaggregated serving at equal GPU count (cluster simulation).

For each offered load, runs ``--replicas`` co-located replicas (cache-aware
routing) and every split into P prefill + D decode replicas with P + D equal
to it, the KV transfer priced on InfiniBand (and the even split on NVLink too),
on the coding-agent workload of ``tokensched bench``. Prints TTFT, ITL, output
tokens per second per user and per GPU, and input TPM per GPU for each.

    .venv/bin/python bench/bench_disagg.py [--replicas 4] [--levels 3M,5M,7M]
"""

from __future__ import annotations

import argparse
import sys

from tokensched.benchmark import BenchConfig, format_level, parse_level
from tokensched.benchmark.cluster import ClusterSimConfig, run_cluster
from tokensched.benchmark.disagg import DisaggConfig, run_disagg
from tokensched.benchmark.metrics import MetricsSummary


def _row(name: str, m: MetricsSummary, extra: str = "") -> str:
    return (
        f"{name:<22}{m.ttft_s.p50:>9.2f}{m.ttft_s.p99:>9.2f}{m.itl_s.p50 * 1e3:>9.1f}{m.tps_per_user.p50:>10.1f}"
        f"{m.output_tps_per_gpu:>10.1f}{format_level(m.tpm_per_gpu):>10}{m.prefix_cache_hit_rate:>8.0%}  {extra}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=4, help="replicas of 4x B200 in each configuration")
    parser.add_argument("--levels", default="3M,5M,7M")
    parser.add_argument("--policy", default="prefix-aware")
    parser.add_argument("--duration", type=float, default=180.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--drain", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    n = args.replicas
    header = f"{'config':<22}{'TTFT p50':>9}{'p99':>9}{'ITL ms':>9}{'TPS/user':>10}{'tok/s/GPU':>10}"
    header += f"{'TPM/GPU':>10}{'hit':>8}"
    for level in (parse_level(x) for x in args.levels.split(",")):
        bench = BenchConfig(
            policy=args.policy,
            target_tpm=level,
            duration_s=args.duration,
            warmup_s=args.warmup,
            drain_s=args.drain,
            seed=args.seed,
        )
        cluster = ClusterSimConfig(replicas=n, bench=bench)
        print(f"\n{format_level(level)} TPM offered, {n} replicas x {bench.num_gpus} GPUs ({args.policy})", flush=True)
        print(header, flush=True)
        colocated = run_cluster(cluster)
        print(_row(f"co-located x{n}", colocated.metrics), flush=True)
        splits = [(p, n - p, "infiniband") for p in range(1, n)] + [(n // 2, n - n // 2, "nvlink")]
        for prefill, decode, link in splits:
            result = run_disagg(DisaggConfig(prefill=prefill, decode=decode, link=link, cluster=cluster))
            extra = f"KV transfer {result.transfer_ms_mean:.0f} ms mean"
            print(_row(f"PD {prefill}P+{decode}D {link[:2].upper()}", result.metrics, extra), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
