"""Published setups the simulator is validated against, and the table that compares them with a sweep.

``coding-agent-b200``: Together AI, "Benchmarking inference at scale: coding
agents" (https://together.ai/blog/coding-agent-benchmarks, 2026-05-19). Kimi K2.5
with EAGLE speculative decoding, 4x B200 per engine, prompts ~45k-200k tokens
growing through each session, answers ~450 tokens on average, every engine
configured for low latency. p50 TTFT at 2.5M input tokens per minute: Together
Inference Engine 0.71 s (4 GPUs), TensorRT-LLM 1.1 s (TP4), SGLang 5.1 s (TP8:
its EAGLE ran out of memory at TP4). Together's engine is proprietary and has no
profile here; its figure is printed for reference. Nothing in the simulator or
the profiles is fitted to these numbers: they are the check, not an input.

TensorRT-LLM is mirrored by ``trtllm-latency``, the configuration NVIDIA publishes
for this model class on B200 at TP4 and for low latency (``free_gpu_memory_fraction``
0.75, ``max_num_tokens`` 8320; see ``tokensched.benchmark.profiles``), since the
published engines were configured for low latency; ``trtllm`` (library defaults)
stays the baseline of ``--answer``.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from tokensched.benchmark.metrics import MaybeNaN
from tokensched.benchmark.sweep import Spread, SweepReport, format_level


class PublishedPoint(BaseModel):
    """One published measurement: an engine's p50 TTFT at an offered TPM."""

    model_config = ConfigDict(frozen=True)

    label: str
    profile: str | None  # the profile that mirrors the engine (None: no such profile)
    num_gpus: int
    tpm: float
    ttft_p50_s: float


class Reproduction(BaseModel):
    """A published setup: which profiles and levels to run, and what was measured."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    policies: tuple[str, ...]
    levels: tuple[float, ...]
    published: tuple[PublishedPoint, ...]

    def result_json(self, rows: list[ComparisonRow], report: SweepReport) -> str:
        result = ReproductionResult(reproduction=self, rows=rows, seeds=report.seeds, order_matches=order_matches(rows))
        return result.model_dump_json(indent=2)


class ComparisonRow(BaseModel):
    """A published p50 TTFT beside the simulated one at the same offered TPM."""

    model_config = ConfigDict(frozen=True)

    label: str
    profile: str | None
    num_gpus: int
    tpm: float
    published_s: float
    simulated_s: Spread | None
    offered_tpm: MaybeNaN  # what the simulation actually offered (median over seeds)
    ratio: MaybeNaN  # simulated median / published
    overloaded: bool


class ReproductionResult(BaseModel):
    """What ``--reproduce`` writes as JSON."""

    model_config = ConfigDict(frozen=True)

    reproduction: Reproduction
    seeds: list[int]
    rows: list[ComparisonRow]
    order_matches: bool | None  # the simulated p50s rank the profiled engines as the published ones do


def order_matches(rows: list[ComparisonRow]) -> bool | None:
    """Whether the simulated medians order the simulated rows as the published figures do (None: < 2 rows)."""
    simulated = [r for r in rows if r.simulated_s is not None and not math.isnan(r.simulated_s.median)]
    if len(simulated) < 2:
        return None
    by_published = [r.label for r in sorted(simulated, key=lambda r: r.published_s)]
    by_simulated = [r.label for r in sorted(simulated, key=lambda r: r.simulated_s.median if r.simulated_s else 0.0)]
    return by_published == by_simulated


REPRODUCTIONS: dict[str, Reproduction] = {
    "coding-agent-b200": Reproduction(
        name="coding-agent-b200",
        source="Together AI, Benchmarking inference at scale: coding agents (together.ai/blog/coding-agent-benchmarks)",
        policies=("trtllm-latency", "sglang-tp8"),
        levels=(1_500_000.0, 2_500_000.0, 3_500_000.0),
        published=(
            PublishedPoint(label="Together Inference Engine", profile=None, num_gpus=4, tpm=2.5e6, ttft_p50_s=0.71),
            PublishedPoint(label="TensorRT-LLM (TP4)", profile="trtllm-latency", num_gpus=4, tpm=2.5e6, ttft_p50_s=1.1),
            PublishedPoint(label="SGLang (TP8)", profile="sglang-tp8", num_gpus=8, tpm=2.5e6, ttft_p50_s=5.1),
        ),
    ),
}


def reproduce_rows(reproduction: Reproduction, report: SweepReport) -> list[ComparisonRow]:
    """One row per published point, with the sweep's point at the same profile and level (if it ran)."""
    rows = []
    for published in reproduction.published:
        point = next(
            (p for p in report.points if p.policy == published.profile and math.isclose(p.level, published.tpm)),
            None,
        )
        simulated = None if point is None else point.ttft_p50_s
        rows.append(
            ComparisonRow(
                label=published.label,
                profile=published.profile,
                num_gpus=published.num_gpus,
                tpm=published.tpm,
                published_s=published.ttft_p50_s,
                simulated_s=simulated,
                offered_tpm=math.nan if point is None else point.offered_tpm.median,
                ratio=math.nan if simulated is None else simulated.median / published.ttft_p50_s,
                overloaded=point is not None and point.overloaded,
            )
        )
    return rows


def compare_table(reproduction: Reproduction, rows: list[ComparisonRow]) -> Table:
    """Published p50 TTFTs beside the simulated ones, with their ratio."""
    order = order_matches(rows)
    verdict = "" if order is None else ("; order as published" if order else "; order NOT as published")
    table = Table(
        title=f"{reproduction.name}: published vs simulated p50 TTFT",
        caption=f"source: {reproduction.source}; simulated: median \\[lowest-highest seed]{verdict}",
        caption_justify="left",
    )
    for name in ("engine", "profile", "GPUs", "label TPM", "offered (sim)", "published", "simulated", "ratio"):
        table.add_column(name, justify="left" if name in ("engine", "profile") else "right")
    for row in rows:
        simulated = (
            "-"
            if row.simulated_s is None
            else (
                f"{row.simulated_s.median:.2f} s [{row.simulated_s.low:.2f}-{row.simulated_s.high:.2f}]"
                + (" OVERLOADED" if row.overloaded else "")
            )
        )
        table.add_row(
            row.label,
            row.profile or "(none: proprietary)",
            str(row.num_gpus),
            format_level(row.tpm),
            "-" if math.isnan(row.offered_tpm) else format_level(row.offered_tpm),
            f"{row.published_s:.2f} s",
            simulated,
            "-" if math.isnan(row.ratio) else f"{row.ratio:.2f}x",
        )
    return table
