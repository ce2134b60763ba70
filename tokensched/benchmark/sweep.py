"""Sweeps of the coding-agent benchmark: every policy at every load level, one JSON report.

The degradation curve of a policy is its metrics as the offered load grows.
All policies at one level see the same sessions (same seed), so differences
between curves are the policies', not the workload's. With a recorded trace
the sweep replays it once per policy instead.
"""

from __future__ import annotations

import re
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

Progress = Callable[[str, float, float], None]
"""``progress(policy, level, fraction_done)`` for the run in progress."""


class SweepReport(BaseModel):
    """Everything a sweep measured, JSON-serialisable (NaN is written as null)."""

    model_config = ConfigDict(frozen=True)

    version: str
    base: BenchConfig
    level_kind: Literal["tpm", "concurrency"]
    levels: list[float]
    policies: list[str]
    trace: str | None  # set when the sweep replayed a recorded trace
    results: list[BenchResult]
    sim_time_s: float
    wall_s: float
    cpu_s: float
    speedup: MaybeNaN  # simulated seconds per wall second over the whole sweep

    def curve(self, policy: str) -> list[BenchResult]:
        """One policy's results in level order."""
        return [r for r in self.results if r.config.policy == policy]

    def level_of(self, result: BenchResult) -> float:
        if self.level_kind == "concurrency":
            return float(result.config.concurrency or 0)
        return result.config.target_tpm or result.metrics.tpm


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
) -> SweepReport:
    """Run every policy at every level (TPM, or sessions if ``base`` sets a concurrency).

    With ``trace``, ``levels`` is ignored and each policy replays the trace.
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
    results: list[BenchResult] = []
    for level in levels:
        for index, policy in enumerate(policies):
            config = _configure(base, policy, level, trace)
            report = None if progress is None else _bind(progress, policy, level)
            result, recorded = run_bench(config, trace=trace, progress=report)
            results.append(result)
            if trace_out is not None and index == 0:
                recorded.save(_trace_path(trace_out, level, len(levels)))
    sim_time = sum(r.run.sim_time_s for r in results)
    wall = time.perf_counter() - wall_start
    return SweepReport(
        version=__version__,
        base=base,
        level_kind=kind,
        levels=list(levels),
        policies=list(policies),
        trace=None if trace is None else f"{len(trace.sessions)} sessions, {trace.header.arrival} arrivals",
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


def _bind(progress: Progress, policy: str, level: float) -> Callable[[float], None]:
    return lambda fraction: progress(policy, level, fraction)


def format_level(level: float) -> str:
    """2,500,000 -> ``2.5M``; 500,000 -> ``500k``; small numbers as integers."""
    if level >= 1e6:
        return f"{level / 1e6:.3g}M"
    if level >= 1e3:
        return f"{level / 1e3:.3g}k"
    return f"{level:g}"
