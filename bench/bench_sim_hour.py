"""One simulated hour per policy: simulated seconds per CPU second (#12's "≥ 1,000× real time" figure).

Runs the bench's simulation (``run_bench``: Kimi-K2.5-class on 4x B200, the
coding-agent workload at 2.5M TPM offered, FP8 KV, 300 s warm-up, 30 s drain;
the run ``tokensched bench --levels 2.5M --duration 3600 --warmup 300 --policies P
--seeds 1`` makes) for each policy and prints the process's CPU seconds, the
ratio of simulated to CPU time, and the load the window actually offered
(CPU time, because the machine may be shared). ``--profile N`` prints the N
most expensive functions of each run by own time instead (cProfile slows the
run ~2x; read shares, not times); ``--split`` also prints the CPU seconds spent
in single steps (``Engine.step``) and in multi-step decode runs
(``Engine.step_run``, and the DP-attention lockstep's runs) with their step
counts. ``PYTHONPATH=<older checkout>``
measures a before with the same script.

Every policy's hour is measured as a lone hour would be: the session
statistics that build its workload (cached per process, since sweeps ask for
them again) are cleared before each one, so the policies run after the first
pay for them too (~0.2-0.3 s of an hour's CPU here).

    .venv/bin/python bench/bench_sim_hour.py [trtllm retain ...] [--duration 3600] [--profile 30] [--split] [--hash]
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pstats
import time
from collections.abc import Callable
from typing import Any

import tokensched
from tokensched.benchmark import dp_attention
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import run_bench
from tokensched.benchmark.workloads.coding_agent import session_statistics
from tokensched.engine import Engine

DEFAULT_POLICIES = [p for p in PROFILES if p != "sglang"]  # sglang (TP4) does not fit: the published OOM


def time_engine_calls() -> dict[str, list[float]]:
    """Wrap Engine.step and Engine.step_run to add up their CPU seconds and the steps they made."""
    totals: dict[str, list[float]] = {"single steps": [0.0, 0], "runs": [0.0, 0]}

    def timed(method: Callable[..., Any], key: str, count: Callable[[Any], int]) -> Callable[..., Any]:
        def wrapper(self: Engine, *args: Any, **kwargs: Any) -> Any:
            start = time.process_time()
            out = method(self, *args, **kwargs)
            totals[key][0] += time.process_time() - start
            totals[key][1] += count(out)
            return out

        return wrapper

    Engine.step = timed(Engine.step, "single steps", lambda out: 1)  # type: ignore[method-assign]
    Engine.step_run = timed(Engine.step_run, "runs", lambda out: len(out) if out else 0)  # type: ignore[method-assign]
    if hasattr(dp_attention, "_RankRun"):  # the DP lockstep's runs (an older checkout has none)
        totals["DP ranks' runs"] = [0.0, 0]
        run = dp_attention._RankRun
        for name in ("begin", "launch_next", "complete", "ended"):
            setattr(run, name, timed(getattr(run, name), "DP ranks' runs", lambda out: 0))
        run.collect = timed(run.collect, "DP ranks' runs", lambda out: 1)  # type: ignore[method-assign]
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("policies", nargs="*", default=DEFAULT_POLICIES)
    parser.add_argument("--duration", type=float, default=3600.0, help="end of the measured arrivals (s)")
    parser.add_argument("--warmup", type=float, default=300.0)
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions instead")
    parser.add_argument("--split", action="store_true", help="CPU s in single steps and in decode runs")
    parser.add_argument(
        "--hash", action="store_true", help="also the sha256 of the hour's deterministic JSON (same hour, same hash)"
    )
    args = parser.parse_args()
    print(f"tokensched from {tokensched.__file__}")
    totals = time_engine_calls() if args.split else None
    for policy in args.policies:
        if totals is not None:
            for parts in totals.values():
                parts[:] = [0.0, 0]
        config = BenchConfig(policy=policy, duration_s=args.duration, warmup_s=args.warmup, drain_s=30, kv_dtype="fp8")
        session_statistics.cache_clear()  # as a lone hour: it builds its own workload's statistics
        profiler = cProfile.Profile() if args.profile else None
        if profiler is not None:
            profiler.enable()
        result, _ = run_bench(config)
        if profiler is not None:
            profiler.disable()
        run = result.run
        digest = hashlib.sha256(result.deterministic_json().encode()).hexdigest()[:16] if args.hash else ""
        print(
            f"{policy:<16} CPU {run.cpu_s:6.1f} s  {run.sim_time_s / run.cpu_s:5.0f}x real time  "
            f"offered {result.metrics.tpm / 1e6:.2f}M TPM  {run.num_steps:,} steps"
            + (f"  sha256 {digest}" if digest else ""),
            flush=True,
        )
        if totals is not None:
            print("   ", "  ".join(f"{key}: {cpu:.2f} s for {int(n):,} steps" for key, (cpu, n) in totals.items()))
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile)


if __name__ == "__main__":
    main()
