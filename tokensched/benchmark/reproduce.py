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
stays the baseline of ``--answer``. ``sglang-tp8-dp`` (SGLang with DP attention, as
its Kimi/DeepSeek launch commands often add) runs as a sensitivity row: whether the
published run used it is not published, so it is neither ranked nor plotted as published.

Reporting (why it is not a single median): a point near a capacity cliff can be
steady in some seeds and overloaded in others, and then the median p50 over seeds
mixes a steady latency with a figure of the window's length. Each row therefore
carries a :class:`Verdict`: ``steady`` (every seed steady: the ratio is the median
over seeds against the published figure), ``overloaded`` (every seed overloaded:
no steady-state p50, no ratio) or ``cliff`` (the seeds disagree: "k of n seeds
overloaded" and the steady seeds' median, no ratio). The reproduction runs
:attr:`Reproduction.seeds` seeds (7) unless ``--seeds`` says otherwise.
"""

from __future__ import annotations

import enum
import math
import statistics

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from tokensched.benchmark.metrics import MaybeNaN
from tokensched.benchmark.run import BenchResult
from tokensched.benchmark.sweep import Spread, SweepReport, format_level


class Verdict(enum.StrEnum):
    """Whether a point's seeds agree that its queue is steady (see the module docstring)."""

    STEADY = "steady"  # every seed steady: the median p50 is a steady-state latency
    OVERLOADED = "overloaded"  # every seed overloaded: the p50 measures the window, not the server
    CLIFF = "cliff"  # the seeds disagree: the point sits on a capacity cliff and no single figure describes it


class PublishedPoint(BaseModel):
    """One published measurement: an engine's p50 TTFT at an offered TPM."""

    model_config = ConfigDict(frozen=True)

    label: str
    profile: str | None  # the profile that mirrors the engine (None: no such profile)
    num_gpus: int
    tpm: float
    ttft_p50_s: float
    sensitivity: bool = False  # a sourced alternative configuration of the engine, not the published one


class Reproduction(BaseModel):
    """A published setup: which profiles and levels to run, and what was measured."""

    model_config = ConfigDict(frozen=True)

    name: str
    source: str
    policies: tuple[str, ...]
    levels: tuple[float, ...]
    published: tuple[PublishedPoint, ...]
    seeds: int = 7  # enough for "k of n seeds overloaded" to mean something at a cliff (3 hid one)

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
    sensitivity: bool = False  # an alternative configuration, left out of the order
    simulated_s: Spread | None  # p50 TTFT over every seed, steady or not
    steady_s: Spread | None  # p50 TTFT over the steady seeds only (None: no seed steady, or not run)
    seed_p50s_s: list[MaybeNaN]  # p50 TTFT by seed, in seed order
    seed_overloaded: list[bool]  # whether each seed was overloaded, in seed order
    offered_tpm: MaybeNaN  # what the simulation actually offered (median over seeds)
    ratio: MaybeNaN  # steady median / published; NaN unless the verdict is steady
    verdict: Verdict | None  # None: no profile, or not run
    overloaded: bool  # most seeds overloaded (the sweep's flag)

    @property
    def overloaded_seeds(self) -> int:
        return sum(self.seed_overloaded)


class ReproductionResult(BaseModel):
    """What ``--reproduce`` writes as JSON."""

    model_config = ConfigDict(frozen=True)

    reproduction: Reproduction
    seeds: list[int]
    rows: list[ComparisonRow]
    order_matches: bool | None  # the simulated p50s rank the profiled engines as the published ones do


def order_matches(rows: list[ComparisonRow]) -> bool | None:
    """Whether the simulated rows rank as the published figures do.

    A steady row ranks by its median p50 and an overloaded one after every
    steady one (its latency is unbounded); None when fewer than two rows ran,
    or when a row is on a cliff (its rank depends on the seed).
    """
    simulated = [r for r in rows if r.verdict is not None and not r.sensitivity]
    if len(simulated) < 2 or any(r.verdict is Verdict.CLIFF for r in simulated):
        return None
    if sum(r.verdict is Verdict.OVERLOADED for r in simulated) > 1:
        return None  # two unbounded latencies have no order

    def rank(row: ComparisonRow) -> float:
        return math.inf if row.verdict is Verdict.OVERLOADED or row.steady_s is None else row.steady_s.median

    by_published = [r.label for r in sorted(simulated, key=lambda r: r.published_s)]
    by_simulated = [r.label for r in sorted(simulated, key=rank)]
    return by_published == by_simulated


def verdict_of(overloaded: list[bool]) -> Verdict:
    """``steady`` if no seed is overloaded, ``overloaded`` if every one is, else ``cliff``."""
    if not overloaded:
        raise ValueError("a verdict needs at least one seed")
    if not any(overloaded):
        return Verdict.STEADY
    return Verdict.OVERLOADED if all(overloaded) else Verdict.CLIFF


def steady_spread(p50s: list[float], overloaded: list[bool]) -> Spread | None:
    """The spread of the steady seeds' p50s (None when no seed is steady)."""
    steady = [p for p, over in zip(p50s, overloaded, strict=True) if not over]
    return Spread.of(steady) if steady else None


REPRODUCTIONS: dict[str, Reproduction] = {
    "coding-agent-b200": Reproduction(
        name="coding-agent-b200",
        source="Together AI, Benchmarking inference at scale: coding agents (together.ai/blog/coding-agent-benchmarks)",
        policies=("trtllm-latency", "sglang-tp8", "sglang-tp8-dp"),
        levels=(1_500_000.0, 2_500_000.0, 3_500_000.0),
        published=(
            PublishedPoint(label="Together Inference Engine", profile=None, num_gpus=4, tpm=2.5e6, ttft_p50_s=0.71),
            PublishedPoint(label="TensorRT-LLM (TP4)", profile="trtllm-latency", num_gpus=4, tpm=2.5e6, ttft_p50_s=1.1),
            PublishedPoint(label="SGLang (TP8)", profile="sglang-tp8", num_gpus=8, tpm=2.5e6, ttft_p50_s=5.1),
            # Whether the published SGLang run used --enable-dp-attention is not published; SGLang's own
            # DeepSeek-V3 / Kimi-K2 launch commands commonly add it (docs/sim.md).
            PublishedPoint(
                label="SGLang (TP8), if DP attention (sensitivity)",
                profile="sglang-tp8-dp",
                num_gpus=8,
                tpm=2.5e6,
                ttft_p50_s=5.1,
                sensitivity=True,
            ),
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
        runs = sorted(_runs_at(report.results, published.profile, published.tpm), key=lambda r: r.config.seed)
        p50s = [r.metrics.ttft_s.p50 for r in runs]
        flags = [r.metrics.overloaded for r in runs]
        verdict = verdict_of(flags) if runs else None
        steady = steady_spread(p50s, flags) if runs else None
        ratio = steady.median / published.ttft_p50_s if verdict is Verdict.STEADY and steady is not None else math.nan
        rows.append(
            ComparisonRow(
                label=published.label,
                profile=published.profile,
                num_gpus=published.num_gpus,
                tpm=published.tpm,
                published_s=published.ttft_p50_s,
                sensitivity=published.sensitivity,
                simulated_s=None if point is None else point.ttft_p50_s,
                steady_s=steady,
                seed_p50s_s=p50s,
                seed_overloaded=flags,
                offered_tpm=math.nan if point is None else point.offered_tpm.median,
                ratio=ratio,
                verdict=verdict,
                overloaded=point is not None and point.overloaded,
            )
        )
    return rows


def _runs_at(results: list[BenchResult], profile: str | None, tpm: float) -> list[BenchResult]:
    if profile is None:
        return []
    return [
        r
        for r in results
        if r.config.policy == profile and r.config.target_tpm is not None and math.isclose(r.config.target_tpm, tpm)
    ]


def describe(row: ComparisonRow) -> str:
    """The simulated cell: a steady median with its spread, or what the seeds say when there is no single figure."""
    if row.verdict is None or row.simulated_s is None:
        return "-"
    n, k = len(row.seed_overloaded), row.overloaded_seeds
    if row.verdict is Verdict.STEADY and row.steady_s is not None:
        s = row.steady_s
        return f"{s.median:.2f} s [{s.low:.2f}-{s.high:.2f}], {n} of {n} seeds steady"
    if row.verdict is Verdict.OVERLOADED:
        return f"OVERLOADED in {k} of {n} seeds (p50 {statistics.median(row.seed_p50s_s):.1f} s grows with the window)"
    steady = row.steady_s
    head = f"CLIFF: {k} of {n} seeds overloaded"
    if steady is None:
        return head
    return f"{head}; the {n - k} steady: {steady.median:.2f} s [{steady.low:.2f}-{steady.high:.2f}]"


def compare_table(reproduction: Reproduction, rows: list[ComparisonRow]) -> Table:
    """Published p50 TTFTs beside the simulated ones, with their ratio."""
    order = order_matches(rows)
    if order is None:
        ran = [r for r in rows if r.verdict is not None and not r.sensitivity]
        verdict = "; order not determined (a profile is on a cliff or both overloaded)" if len(ran) > 1 else ""
    else:
        verdict = "; order as published" if order else "; order NOT as published"
    table = Table(
        title=f"{reproduction.name}: published vs simulated p50 TTFT",
        caption=f"source: {reproduction.source}; simulated: median p50 over the steady seeds \\[lowest-highest]; "
        f"a ratio only where every seed is steady; sensitivity rows are not the published configuration and are "
        f"left out of the order{verdict}",
        caption_justify="left",
    )
    for name in ("engine", "profile", "GPUs", "label TPM", "offered (sim)", "published", "simulated", "ratio"):
        table.add_column(name, justify="left" if name in ("engine", "profile") else "right")
    for row in rows:
        simulated = describe(row)
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
