"""Prefix-cache eviction compared on the coding-agent workload: hit rate and TTFT per eviction policy.

``tokensched bench --eviction lru,lfu,cost,pinned`` runs one profile (the first
of ``--policies``) at each load level once per eviction policy, on the same
sessions (one seed) and deployment, changing only
``SchedulerConfig.prefix_eviction``; it prints a table and writes
``eviction.json``.

So that ``pinned`` has something real to keep, every session of this
comparison opens with the same system prompt of :data:`SYSTEM_PROMPT_TOKENS`
tokens (the workload's ``shared_prefix_tokens``; part of the first turn's
40k-50k tokens, so prompt lengths do not change), for every eviction policy
alike. ``pinned`` pins that prompt with ``Scheduler.pin_prefix`` before the
first request, capped at the prompt's full blocks (``pinned_prefix_blocks``).
The size is an assumption, not a measurement: a coding agent's system prompt
with its tool definitions is taken to be about 16k tokens.

The run is built by :func:`tokensched.benchmark.run.build_simulation`, as
:func:`~tokensched.benchmark.run.run_bench`'s is, and driven here because the
prefix must be pinned on the scheduler before the first step;
``tests/benchmark/test_eviction_bench.py`` checks that without pinning both
give the same metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.metrics import MaybeNaN
from tokensched.benchmark.run import build_simulation, drive
from tokensched.benchmark.workloads import TraceHeader
from tokensched.benchmark.workloads.sessions import prompt_tokens
from tokensched.config import SchedulerConfig
from tokensched.engine import Engine

EVICTION_POLICIES: tuple[str, ...] = get_args(SchedulerConfig.model_fields["prefix_eviction"].annotation)
SYSTEM_PROMPT_TOKENS = 16_384


class EvictionRow(BaseModel):
    """One eviction policy at one load level."""

    model_config = ConfigDict(frozen=True)

    target_tpm: float
    eviction: str
    pinned_blocks: int  # blocks of the system prompt pinned (0 unless ``pinned``)
    prefix_cache_hit_rate: MaybeNaN
    ttft_p50_s: MaybeNaN
    ttft_p90_s: MaybeNaN
    num_preemptions: int
    requests_finished: int
    wall_s: float


class EvictionReport(BaseModel):
    """The comparison, as written to ``eviction.json``."""

    model_config = ConfigDict(frozen=True)

    profile: str
    system_prompt_tokens: int
    duration_s: float
    warmup_s: float
    seed: int
    rows: tuple[EvictionRow, ...]


def system_prompt(header: TraceHeader) -> list[int]:
    """The tokens every session opens with, derived from the workload's header as :class:`SessionWorkload` does."""
    return prompt_tokens(
        f"tokensched/shared-prefix/{header.shared_prefix_seed}", header.shared_prefix_tokens, header.vocab_size
    )


def run_eviction(config: BenchConfig, eviction: str) -> EvictionRow:
    """Simulate ``config`` (its profile, load and workload) with ``eviction``; pins the system prompt if ``pinned``."""
    if eviction not in EVICTION_POLICIES:
        raise ValueError(f"unknown eviction policy {eviction!r}; known: {', '.join(EVICTION_POLICIES)}")
    if config.target_tpm is None:
        raise ValueError("the eviction comparison runs at TPM levels, not at a concurrency")
    wall_start = time.perf_counter()
    pinned_blocks = config.workload.shared_prefix_tokens // config.block_size
    built = build_simulation(config, overrides={"prefix_eviction": eviction, "pinned_prefix_blocks": pinned_blocks})
    workload, executor, scheduler, metrics = built.workload, built.executor, built.scheduler, built.metrics
    prompt = system_prompt(workload.header)
    pinned = scheduler.pin_prefix(prompt) if eviction == "pinned" and prompt else 0
    drive(Engine(scheduler, executor), workload, metrics, built.stop)
    end = executor.now()
    metrics.on_stats(end, scheduler.stats())
    summary = metrics.summarize(end)
    return EvictionRow(
        target_tpm=config.target_tpm,
        eviction=eviction,
        pinned_blocks=pinned,
        prefix_cache_hit_rate=summary.prefix_cache_hit_rate,
        ttft_p50_s=summary.ttft_s.p50,
        ttft_p90_s=summary.ttft_s.p90,
        num_preemptions=summary.num_preemptions,
        requests_finished=summary.num_finished,
        wall_s=time.perf_counter() - wall_start,
    )


def compare_evictions(
    base: BenchConfig,
    levels: Sequence[float],
    evictions: Sequence[str],
    system_prompt_tokens: int = SYSTEM_PROMPT_TOKENS,
    progress: Callable[[EvictionRow], None] | None = None,
) -> EvictionReport:
    """Every eviction policy at every TPM level, on ``base``'s profile with a shared system prompt."""
    unknown = [e for e in evictions if e not in EVICTION_POLICIES]
    if unknown or not evictions:
        raise ValueError(f"eviction policies: unknown {unknown or 'none given'}; known: {', '.join(EVICTION_POLICIES)}")
    workload = base.workload.model_copy(update={"shared_prefix_tokens": system_prompt_tokens})
    rows: list[EvictionRow] = []
    for tpm in levels:
        for eviction in evictions:
            config = base.model_copy(update={"target_tpm": tpm, "concurrency": None, "workload": workload})
            row = run_eviction(config, eviction)
            rows.append(row)
            if progress is not None:
                progress(row)
    return EvictionReport(
        profile=base.policy,
        system_prompt_tokens=system_prompt_tokens,
        duration_s=base.duration_s,
        warmup_s=base.warmup_s,
        seed=base.seed,
        rows=tuple(rows),
    )


def markdown_table(report: EvictionReport) -> str:
    """The report as the Markdown table docs/policies.md shows."""
    lines = [
        "| input TPM | eviction | pinned blocks | prefix hit rate | TTFT p50 (s) | TTFT p90 (s) | preemptions |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r.target_tpm:,.0f} | {r.eviction} | {r.pinned_blocks} | {_fmt(r.prefix_cache_hit_rate, 3)} "
            f"| {_fmt(r.ttft_p50_s, 2)} | {_fmt(r.ttft_p90_s, 2)} | {r.num_preemptions} |"
        )
    return "\n".join(lines)


def _fmt(value: float, digits: int) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def parse_evictions(text: str, concurrency: bool = False) -> list[str]:
    """``--eviction lru,lfu,cost,pinned`` checked before anything runs; raises ValueError."""
    if concurrency:
        raise ValueError("--eviction compares at TPM levels (--levels), not at --concurrency")
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in EVICTION_POLICIES]
    if unknown or not names:
        given = ", ".join(unknown) if unknown else "none given"
        raise ValueError(f"--eviction: unknown {given}; known: {', '.join(EVICTION_POLICIES)}")
    return names


def eviction_command(
    base: BenchConfig, levels: Sequence[float], evictions: Sequence[str], out: Path, echo: Callable[[str], None]
) -> EvictionReport:
    """What ``tokensched bench --eviction`` does once its arguments are checked: run, print, write eviction.json."""
    echo(
        f"eviction comparison: profile {base.policy}, seed {base.seed}, {base.duration_s:.0f} s "
        f"(warm-up {base.warmup_s:.0f} s), every session opening with a {SYSTEM_PROMPT_TOKENS:,}-token system prompt"
    )
    report = compare_evictions(
        base,
        levels,
        evictions,
        progress=lambda r: echo(f"  {r.target_tpm:,.0f} TPM, {r.eviction}: done in {r.wall_s:.0f} s"),
    )
    echo(markdown_table(report))
    path = out / "eviction.json"
    path.write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    echo(f"report: {path}")
    return report
