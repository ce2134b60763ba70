"""How many replicas keep p50 TTFT under a target at a given load, for each router policy (cluster simulation).

For each offered load (input tokens per minute, the coding-agent workload of
``tokensched bench``) and each router policy, finds the fewest replicas of the
deployment (default: Kimi-K2.5-class on 4x B200, the tokensched prefix-aware
profile) whose p50 TTFT over the measured window is at most ``--ttft``:
it brackets the answer by growing the count 25% at a time from an estimate,
then bisects. Prints every run and the table; writes ``--out`` (JSON).

    .venv/bin/python bench/bench_cluster_sizing.py [--levels 10M,25M,50M] [--routers cache_aware,round_robin]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from tokensched.benchmark import BenchConfig, format_level, parse_level
from tokensched.benchmark.cluster import ClusterSimConfig, ClusterSimResult, run_cluster
from tokensched.cluster.spec import RouterPolicy

GUESS_TPM_PER_REPLICA = {"cache_aware": 1.4e6, "round_robin": 0.8e6}  # starting points only (measured: 4 replicas)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10M,25M,50M")
    parser.add_argument("--routers", default="cache_aware", help="routers whose replica count is searched")
    parser.add_argument(
        "--compare", default="round_robin", help="routers run at the searched counts (x1 and x2) for comparison"
    )
    parser.add_argument("--ttft", type=float, default=1.0, help="p50 TTFT target, seconds")
    parser.add_argument("--policy", default="prefix-aware", help="the replicas' engine profile")
    parser.add_argument("--duration", type=float, default=240.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--drain", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-replicas", type=int, default=64, help="give up above this many (reported as >N)")
    parser.add_argument("--out", type=Path, default=Path("out/cluster_sizing.json"))
    args = parser.parse_args()
    rows: list[dict[str, object]] = []

    def run(level: float, router: str, replicas: int) -> ClusterSimResult:
        bench = BenchConfig(
            policy=args.policy,
            target_tpm=level,
            duration_s=args.duration,
            warmup_s=args.warmup,
            drain_s=args.drain,
            seed=args.seed,
        )
        result = run_cluster(ClusterSimConfig(replicas=replicas, router=RouterPolicy(router), bench=bench))
        m = result.metrics
        print(
            f"  {format_level(level):>5} {router:<12} x{replicas:<3} TTFT p50 {m.ttft_s.p50:7.2f} s  "
            f"p99 {m.ttft_s.p99:7.2f} s  hit {m.prefix_cache_hit_rate:5.1%}  "
            f"sim {result.sim_time_s * replicas:,.0f} replica-s in {result.wall_s:,.0f} s wall",
            flush=True,
        )
        rows.append(
            {
                "level": level,
                "router": router,
                "replicas": replicas,
                "ttft_p50_s": m.ttft_s.p50,
                "ttft_p99_s": m.ttft_s.p99,
                "prefix_hit_rate": m.prefix_cache_hit_rate,
                "tpm": m.tpm,
                "wall_s": result.wall_s,
                "cpu_s": result.cpu_s,
            }
        )
        return result

    def ok(result: ClusterSimResult) -> bool:
        return not math.isnan(result.metrics.ttft_s.p50) and result.metrics.ttft_s.p50 <= args.ttft

    answers: dict[tuple[float, str], int | None] = {}  # None: no count up to --max-replicas meets the target
    for level in (parse_level(x) for x in args.levels.split(",")):
        for router in (r.strip() for r in args.routers.split(",")):
            n = max(1, round(level / GUESS_TPM_PER_REPLICA.get(router, 1e6)))
            passed: int | None = None
            failed = 0
            while passed is None and n <= args.max_replicas:  # grow until one count passes
                if ok(run(level, router, n)):
                    passed = n
                else:
                    failed, n = n, max(n + 1, math.ceil(n * 1.25))
            if passed is None:
                answers[(level, router)] = None
                continue
            if failed == 0:  # the first guess passed: shrink until one fails
                while passed > 1:
                    n = max(1, math.floor(passed / 1.25))
                    if n == passed:
                        n = passed - 1
                    if ok(run(level, router, n)):
                        passed = n
                    else:
                        failed = n
                        break
            while passed - failed > 1:  # bisect between a failing and a passing count
                mid = (passed + failed) // 2
                if ok(run(level, router, mid)):
                    passed = mid
                else:
                    failed = mid
            answers[(level, router)] = passed
    routers = [r.strip() for r in args.routers.split(",")]
    compared: dict[tuple[float, str, int], float] = {}
    for (level, _searched), found in list(answers.items()):
        for other in (c.strip() for c in args.compare.split(",") if c.strip()):
            for count in (found, 2 * found) if found else ():
                compared[(level, other, count)] = run(level, other, count).metrics.ttft_s.p50
    print(f"\nreplicas of {args.policy} on 4x B200 for p50 TTFT <= {args.ttft:g} s:")
    print(f"{'TPM':>6}" + "".join(f"{r:>16}" for r in routers) + "  others at those counts (p50 TTFT)")
    for level in sorted({lvl for lvl, _ in answers}):
        cells = [answers[(level, r)] for r in routers]
        others = ", ".join(f"{o} x{c}: {t:.2f} s" for (lvl, o, c), t in compared.items() if lvl == level)
        print(
            f"{format_level(level):>6}"
            + "".join(f"{n if n else f'>{args.max_replicas}':>16}" for n in cells)
            + "  "
            + others
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"runs": rows, "answers": [{"level": lvl, "router": r, "replicas": n} for (lvl, r), n in answers.items()]},
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"runs: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
