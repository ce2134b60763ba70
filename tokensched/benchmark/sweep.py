"""Sweeps of the coding-agent benchmark: every policy at every load level and seed, one JSON report.

The degradation curve of a policy is its metrics as the offered load grows.
All policies at one level see the same sessions (same seeds), so differences
between curves are the policies', not the workload's. Each point runs several
seeds (the simulator is cheap) and is summarised as the median over seeds with
the lowest and highest beside it (:class:`Point`); a point is *overloaded* when
most of its seeds are (see :mod:`tokensched.benchmark.metrics`), and then its
TTFT is a figure of the window's length, not a steady-state latency. With a
recorded trace the sweep replays it once per policy instead.
"""

from __future__ import annotations

import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from tokensched import __version__
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.metrics import MaybeNaN
from tokensched.benchmark.run import BenchResult, run_bench
from tokensched.benchmark.workloads import Trace

_LEVEL = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*$")

Progress = Callable[[str, float, int, float], None]
"""``progress(policy, level, seed, fraction_done)`` for the run in progress."""


class Spread(BaseModel):
    """A figure over seeds: the median, and the lowest and highest seed's."""

    model_config = ConfigDict(frozen=True)

    median: MaybeNaN
    low: MaybeNaN
    high: MaybeNaN

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        data = [v for v in values if not math.isnan(v)]
        if not data:
            return cls(median=math.nan, low=math.nan, high=math.nan)
        return cls(median=statistics.median(data), low=min(data), high=max(data))


class Point(BaseModel):
    """One policy at one load level, over its seeds."""

    model_config = ConfigDict(frozen=True)

    policy: str
    level: float
    num_gpus: int
    seeds: list[int]
    offered_tpm: Spread  # prompt tokens arriving in the window per minute (what the label asks for)
    served_tpm: Spread  # prompt tokens whose prefill completed in the window per minute
    ttft_p50_s: Spread
    ttft_p99_s: Spread
    tps_per_user_p50: Spread
    cache_hit: Spread
    overloaded_seeds: int
    overloaded: bool  # most seeds' queues were still growing at the end of the window

    @property
    def served_tpm_per_gpu(self) -> float:
        return self.served_tpm.median / self.num_gpus

    @property
    def offered_tpm_per_gpu(self) -> float:
        return self.offered_tpm.median / self.num_gpus


def summarize_point(policy: str, level: float, runs: Sequence[BenchResult]) -> Point:
    """The median and spread over seeds of one policy at one level."""
    metrics = [r.metrics for r in runs]
    overloaded = sum(1 for m in metrics if m.overloaded)
    return Point(
        policy=policy,
        level=level,
        num_gpus=runs[0].metrics.num_gpus,
        seeds=[r.config.seed for r in runs],
        offered_tpm=Spread.of([m.tpm for m in metrics]),
        served_tpm=Spread.of([m.served_tpm for m in metrics]),
        ttft_p50_s=Spread.of([m.ttft_s.p50 for m in metrics]),
        ttft_p99_s=Spread.of([m.ttft_s.p99 for m in metrics]),
        tps_per_user_p50=Spread.of([m.tps_per_user.p50 for m in metrics]),
        cache_hit=Spread.of([m.prefix_cache_hit_rate for m in metrics]),
        overloaded_seeds=overloaded,
        overloaded=2 * overloaded > len(metrics),
    )


class SweepReport(BaseModel):
    """Everything a sweep measured, JSON-serialisable (NaN is written as null)."""

    model_config = ConfigDict(frozen=True)

    version: str
    base: BenchConfig
    level_kind: Literal["tpm", "concurrency"]
    levels: list[float]
    policies: list[str]
    trace: str | None  # set when the sweep replayed a recorded trace
    seeds: list[int]
    points: list[Point]  # per policy, in level order
    results: list[BenchResult]  # every run (policy x level x seed)
    sim_time_s: float
    wall_s: float
    cpu_s: float
    speedup: MaybeNaN  # simulated seconds per wall second over the whole sweep

    def curve(self, policy: str) -> list[Point]:
        """One policy's points in level order."""
        return [p for p in self.points if p.policy == policy]


def parse_level(text: str) -> float:
    """``"2.5M"`` -> 2,500,000; ``"500k"`` -> 500,000; plain numbers as they are."""
    match = _LEVEL.match(text)
    if match is None:
        raise ValueError(f"not a load level: {text!r} (expected e.g. 500k, 2.5M or 1200000)")
    number, suffix = match.groups()
    return float(number) * {"": 1, "k": 1e3, "m": 1e6}[suffix.lower()]


def sweep(
    base: BenchConfig,
    policies: Sequence[str],
    levels: Sequence[float] = (),
    *,
    trace: Trace | None = None,
    trace_out: Path | None = None,
    progress: Progress | None = None,
    seeds: int = 3,
) -> SweepReport:
    """Run every policy at every level (TPM, or sessions if ``base`` sets a concurrency) with ``seeds`` seeds.

    Seeds are ``base.seed``, ``base.seed + 1``, ... With ``trace``, ``levels``
    is ignored and each policy replays the trace once.
    With ``trace_out``, the trace of each level's first run is written there
    (``NAME-LEVEL.jsonl`` when there are several levels).
    """
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    kind: Literal["tpm", "concurrency"]
    if trace is not None:
        header = trace.header
        kind = "concurrency" if header.concurrency is not None else "tpm"
        levels = [header.target_tpm or float(header.concurrency or 0)]
    else:
        kind = "concurrency" if base.concurrency is not None else "tpm"
        if not levels:
            raise ValueError("a sweep needs at least one load level")
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    seed_list = [base.seed] if trace is not None else [base.seed + k for k in range(seeds)]
    results: list[BenchResult] = []
    points: dict[tuple[str, float], Point] = {}
    for level in levels:
        for index, policy in enumerate(policies):
            runs = []
            for seed in seed_list:
                config = _configure(base, policy, level, trace).model_copy(update={"seed": seed})
                report = None if progress is None else _bind(progress, policy, level, seed)
                result, recorded = run_bench(config, trace=trace, progress=report)
                runs.append(result)
                if trace_out is not None and index == 0 and seed == base.seed:
                    recorded.save(_trace_path(trace_out, level, len(levels)))
            results += runs
            points[(policy, level)] = summarize_point(policy, level, runs)
    sim_time = sum(r.run.sim_time_s for r in results)
    wall = time.perf_counter() - wall_start
    return SweepReport(
        version=__version__,
        base=base,
        level_kind=kind,
        levels=list(levels),
        policies=list(policies),
        trace=None if trace is None else f"{len(trace.sessions)} sessions, {trace.header.arrival} arrivals",
        seeds=seed_list,
        points=[points[(policy, level)] for policy in policies for level in levels],
        results=sorted(results, key=lambda r: list(policies).index(r.config.policy)),
        sim_time_s=sim_time,
        wall_s=wall,
        cpu_s=time.process_time() - cpu_start,
        speedup=sim_time / wall if wall > 0 else float("inf"),
    )


def _configure(base: BenchConfig, policy: str, level: float, trace: Trace | None) -> BenchConfig:
    update: dict[str, Any] = {"policy": policy}
    if trace is not None:
        header = trace.header
        update |= {"target_tpm": header.target_tpm, "concurrency": header.concurrency}
    elif base.concurrency is not None:
        update["concurrency"] = round(level)
    else:
        update["target_tpm"] = float(level)
    return BenchConfig.model_validate({**base.model_dump(), **update})


def _trace_path(path: Path, level: float, num_levels: int) -> Path:
    if num_levels == 1:
        return path
    return path.with_name(f"{path.stem}-{format_level(level)}{path.suffix or '.jsonl'}")


def _bind(progress: Progress, policy: str, level: float, seed: int) -> Callable[[float], None]:
    return lambda fraction: progress(policy, level, seed, fraction)


def format_level(level: float) -> str:
    """2,500,000 -> ``2.5M``; 500,000 -> ``500k``; small numbers as integers."""
    if level >= 1e6:
        return f"{level / 1e6:.3g}M"
    if level >= 1e3:
        return f"{level / 1e3:.3g}k"
    return f"{level:g}"
