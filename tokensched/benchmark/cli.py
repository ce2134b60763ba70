"""``tokensched bench``: sweep load levels of coding-agent sessions on the simulated GPU and compare profiles.

Every argument is checked before the first run (presets, deployments whose
weights do not fit, seeds, block sizes, policies, the output folder), and a bad
one is reported on one line with exit status 2, never with a traceback. Before
it runs, the command prints each profile's KV capacity. ``--reproduce`` runs a
published setup and prints the published figures beside the simulated ones;
``--answer`` runs the comparison of :mod:`tokensched.benchmark.answer`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokensched.benchmark.answer import ANSWER_LEVELS, ANSWER_POLICIES, Answer, answer_table, find_answer
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.eviction import eviction_command, parse_evictions
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.reproduce import REPRODUCTIONS, Reproduction, compare_table, reproduce_rows
from tokensched.benchmark.run import KVCapacity, kv_capacity
from tokensched.benchmark.sweep import SweepReport, format_level, parse_level, sweep
from tokensched.benchmark.workloads import CodingAgentConfig, Trace
from tokensched.errors import TokenschedError

DEFAULT_POLICIES = "trtllm,vllm,prefix-aware"
DEFAULT_LEVELS = "1M,2.5M,4M"
KV_DTYPES = ("fp8", "bf16")  # what serving engines store an MLA latent cache in on Blackwell
MAX_BLOCK_SIZE = 4096  # SchedulerConfig's limit
DEFAULT_SEEDS = 3  # the main job stays at about a minute; a reproduction runs more (Reproduction.seeds)


def bench_command(
    policies: Annotated[str, typer.Option(help=f"comma-separated, from: {', '.join(PROFILES)}")] = DEFAULT_POLICIES,
    levels: Annotated[str, typer.Option(help="offered TPM levels (input tokens/min), e.g. 500k,2.5M")] = DEFAULT_LEVELS,
    concurrency: Annotated[
        str | None, typer.Option(help="sweep sessions kept running instead of TPM, e.g. 2,4,8")
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(help=f"seeds per point, median and spread reported (default {DEFAULT_SEEDS}; --reproduce: 7)"),
    ] = None,
    model: Annotated[str, typer.Option(help="model preset of the simulator")] = "kimi-k2.5",
    gpu: Annotated[str, typer.Option(help="GPU preset of the simulator")] = "b200",
    tp: Annotated[int, typer.Option(help="tensor-parallel GPUs (profiles that name a TP keep theirs)")] = 4,
    kv_dtype: Annotated[str, typer.Option(help=f"KV cache dtype: {' or '.join(KV_DTYPES)}")] = "fp8",
    spec_tokens: Annotated[int, typer.Option(help="EAGLE draft tokens per step (0: no speculation)")] = 3,
    spec_acceptance: Annotated[
        float, typer.Option(help="mean accepted length per verification, bonus token included")
    ] = 2.54,
    duration: Annotated[float, typer.Option(help="simulated seconds of measured arrivals")] = 240.0,
    warmup: Annotated[float, typer.Option(help="simulated seconds before measuring")] = 60.0,
    drain: Annotated[float, typer.Option(help="simulated seconds of load after the measured window")] = 30.0,
    seed: Annotated[int, typer.Option(help="first seed of the workload and the simulator")] = 0,
    ttft_slo: Annotated[float, typer.Option(help="TTFT target in seconds (SLO policy, attainment)")] = 10.0,
    block_size: Annotated[int, typer.Option(help="KV block size in tokens")] = 64,
    turns: Annotated[str, typer.Option(help="open: turns on a fixed timeline; closed: after each answer")] = "open",
    think_time: Annotated[
        float, typer.Option(help="median seconds between an answer and the next turn (an assumption: see docs)")
    ] = 5.0,
    out: Annotated[Path, typer.Option(help="output folder for bench.json and bench.png")] = Path("out"),
    trace_in: Annotated[
        Path | None, typer.Option(help="replay this JSONL trace instead of --levels (same --duration etc. as recorded)")
    ] = None,
    trace_out: Annotated[Path | None, typer.Option(help="record the workload as JSONL here")] = None,
    plot: Annotated[bool, typer.Option(help="write bench.png (needs matplotlib)")] = True,
    reproduce: Annotated[
        str | None, typer.Option(help=f"run a published setup and compare: {', '.join(REPRODUCTIONS)}")
    ] = None,
    answer: Annotated[
        bool, typer.Option(help="most TPM/GPU at p50 TTFT <= 1 s and >= 70 TPS/user: tokensched vs baselines")
    ] = False,
    eviction: Annotated[
        str | None,
        typer.Option(
            help="instead of the sweep, compare prefix eviction (e.g. lru,lfu,cost,pinned) on the first "
            "profile at each TPM level, one seed; writes eviction.json"
        ),
    ] = None,
    host_kv_gb: Annotated[
        float, typer.Option(help="host-memory KV tier per replica in GB (0: device only; see docs/kv_tiers.md)")
    ] = 0.0,
) -> None:
    """Sweep load levels of coding-agent sessions on the simulated GPU and compare engine profiles."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 160))  # logs and pipes: keep table rows on one line
    reproduction: Reproduction | None = None
    if reproduce is not None:
        if reproduce not in REPRODUCTIONS:
            _fail(f"--reproduce: unknown setup {reproduce!r}; known: {', '.join(REPRODUCTIONS)}")
        reproduction = REPRODUCTIONS[reproduce]
        policies = ",".join(reproduction.policies)
        if levels == DEFAULT_LEVELS:
            levels = ",".join(map(format_level, reproduction.levels))
    elif answer:  # the answer's profiles and levels unless the command line names others
        if policies == DEFAULT_POLICIES:
            policies = ",".join(ANSWER_POLICIES)
        if levels == DEFAULT_LEVELS:
            levels = ",".join(map(format_level, ANSWER_LEVELS))
    chosen = _split(policies)
    if not chosen:
        _fail(f"--policies: no policy given in {policies!r}; known: {', '.join(PROFILES)}")
    unknown = [p for p in chosen if p not in PROFILES]
    if unknown:
        _fail(f"--policies: unknown {', '.join(unknown)}; known: {', '.join(PROFILES)}")
    if seed < 0:
        _fail(f"--seed must be >= 0, got {seed}")
    if seeds is None:
        seeds = reproduction.seeds if reproduction is not None else DEFAULT_SEEDS
    if seeds < 1:
        _fail(f"--seeds must be >= 1, got {seeds}")
    if kv_dtype not in KV_DTYPES:
        _fail(f"--kv-dtype {kv_dtype!r} is not supported; use {' or '.join(KV_DTYPES)}")
    if not 1 <= block_size <= MAX_BLOCK_SIZE:
        _fail(f"--block-size must be within 1..{MAX_BLOCK_SIZE} tokens, got {block_size}")
    try:
        points = [parse_level(x) for x in _split(concurrency or levels)]
        if not points:
            raise ValueError(f"no load level given in {concurrency or levels!r}")
        base = BenchConfig(
            model=model,
            gpu=gpu,
            tp=tp,
            kv_dtype=kv_dtype,
            policy=chosen[0],
            target_tpm=None if concurrency else points[0],
            concurrency=round(points[0]) if concurrency else None,
            duration_s=duration,
            warmup_s=warmup,
            drain_s=drain,
            ttft_slo_s=ttft_slo,
            seed=seed,
            block_size=block_size,
            num_speculative_tokens=spec_tokens,
            spec_accept_length=spec_acceptance if spec_tokens else 1.0,
            turns=turns,  # type: ignore[arg-type]  # validated by pydantic
            workload=CodingAgentConfig(think_time_median_s=think_time),
            host_kv_gb=host_kv_gb,
        )
        capacities = [kv_capacity(base.model_copy(update={"policy": p})) for p in chosen]
        trace = Trace.load(trace_in) if trace_in is not None else None
        evictions = parse_evictions(eviction, concurrency is not None) if eviction is not None else None
    except ValidationError as exc:
        _fail(_one_line(exc))
    except (ValueError, TokenschedError) as exc:
        _fail(str(exc))
    too_small = [c for c in capacities if c.max_request_tokens < base.workload.first_turn_max_tokens]
    if too_small:
        c = too_small[0]
        _fail(
            f"{c.profile}: one request can hold {c.max_request_tokens:,} tokens of KV, less than a session's first "
            f"prompt ({base.workload.first_turn_max_tokens:,}); try a smaller --block-size or more GPUs"
        )
    _check_writable(out)
    console.print(_capacity_table(capacities))
    if evictions is not None:  # tokensched.benchmark.eviction
        eviction_command(base, points, evictions, out, console.print)
        return
    if answer:
        points = sorted(points)
    report = _run_with_progress(console, base, chosen, points, trace, trace_out, seeds, answer)
    if report.skipped:
        console.print(f"not run (above the policy's first overloaded level): {', '.join(report.skipped)}")
    console.print(_points_table(report))
    if report.level_kind == "tpm":
        console.print(_offered_line(report))
    (out / "bench.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    console.print(f"report: {out / 'bench.json'}")
    published: list[tuple[str, float, float]] = []
    if reproduction is not None:
        rows = reproduce_rows(reproduction, report)
        console.print(compare_table(reproduction, rows))
        (out / "reproduce.json").write_text(reproduction.result_json(rows, report) + "\n", encoding="utf-8")
        console.print(f"comparison: {out / 'reproduce.json'}")
        published = [(r.label, r.tpm, r.ttft_p50_s) for r in reproduction.published if not r.sensitivity]
    found: Answer | None = None
    if answer:
        found = find_answer(report)
        console.print(answer_table(found))
        (out / "answer.json").write_text(found.model_dump_json(indent=2) + "\n", encoding="utf-8")
        console.print(f"answer: {out / 'answer.json'}")
    if plot:
        from tokensched.benchmark.report import plot_sweep

        targets = (found.max_ttft_s, found.min_tps_per_user) if found is not None else None
        console.print(f"plot:   {plot_sweep(report, out / 'bench.png', published=published, targets=targets)}")
    console.print(
        f"simulated {report.sim_time_s:,.0f} s in {report.wall_s:,.1f} s wall "
        f"({report.speedup:,.0f}x real time; {report.cpu_s:,.1f} s CPU)"
    )


def _fail(message: str) -> NoReturn:
    """One line on stderr and exit status 2 (a usage error), before anything has run."""
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(2)


def _one_line(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])


def _check_writable(out: Path) -> None:
    """Create ``out`` and write a probe file now, so a sweep's results are never lost to a bad folder."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".tokensched-write-probe-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as exc:
        _fail(f"--out {out}: cannot write there ({exc.strerror or exc})")


def _run_with_progress(
    console: Console,
    base: BenchConfig,
    policies: list[str],
    levels: list[float],
    trace: Trace | None,
    trace_out: Path | None,
    seeds: int,
    skip_after_overload: bool,
) -> SweepReport:
    runs = len(policies) * (1 if trace is not None else len(levels) * seeds)
    columns = (TextColumn("{task.description:<28}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("simulating", total=float(runs))
        done: dict[tuple[str, float, int], float] = {}

        def advance(policy: str, level: float, seed: int, fraction: float) -> None:
            done[(policy, level, seed)] = fraction
            description = f"{policy} @ {format_level(level)} seed {seed}"
            bar.update(task, completed=sum(done.values()), description=description)

        report = sweep(
            base,
            policies,
            levels,
            trace=trace,
            trace_out=trace_out,
            progress=advance,
            seeds=seeds,
            skip_after_overload=skip_after_overload,
        )
        bar.update(task, completed=float(runs), description="done")
    return report


def _capacity_table(capacities: list[KVCapacity]) -> Table:
    table = Table(title="KV capacity per profile (before running)", title_justify="left")
    for name in ("profile", "deployment", "KV tokens", "blocks", "sessions of median length", "KV per rank"):
        table.add_column(name, justify="left" if name in ("profile", "deployment") else "right")
    for c in capacities:
        table.add_row(
            c.profile,
            c.shape,
            f"{c.tokens:,}",
            f"{c.num_blocks:,} x {c.block_size}",
            f"{c.sessions_that_fit:.1f} x {c.median_prompt_tokens / 1e3:.0f}k",
            _kv_gb(c.memory),
        )
    return table


def _kv_gb(memory: str) -> str:
    """The ``KV 34.5`` item of the simulator's one-line memory breakdown, as ``34.5 GB``."""
    for part in memory.replace(";", ",").split(","):
        words = part.split()
        if len(words) == 2 and words[0] == "KV":
            return f"{words[1]} GB"
    return "-"


def _points_table(report: SweepReport) -> Table:
    seeds = len(report.seeds)
    caption = (
        f"median over {seeds} seed(s) \\[lowest-highest]; OVERLOADED: the queue was still growing at the end of "
        "the window, so its TTFT depends on the window, not a steady state"
    )
    table = Table(title="coding-agent sessions", caption=caption, caption_justify="left")
    level_name = "sessions" if report.level_kind == "concurrency" else "label"
    for name in (level_name, "policy", "GPUs", "offered TPM", "served TPM (/GPU)", "TTFT p50", "TTFT p99"):
        table.add_column(name, justify="right")
    for name in ("TPS/user p50", "cache hit", "state"):
        table.add_column(name, justify="right")
    for policy in report.policies:
        for p in report.curve(policy):
            table.add_row(
                format_level(p.level),
                policy,
                str(p.num_gpus),
                format_level(p.offered_tpm.median),
                f"{format_level(p.served_tpm.median)} ({format_level(p.served_tpm_per_gpu)})",
                _spread_seconds(p.ttft_p50_s.median, p.ttft_p50_s.low, p.ttft_p50_s.high),
                _seconds(p.ttft_p99_s.median),
                _number(p.tps_per_user_p50.median),
                _percent(p.cache_hit.median),
                f"[red]OVERLOADED {p.overloaded_seeds}/{seeds}[/red]"
                if p.overloaded
                else ("steady" if not p.overloaded_seeds else f"steady ({p.overloaded_seeds}/{seeds} over)"),
            )
    return table


def _offered_line(report: SweepReport) -> str:
    worst = max(report.points, key=lambda p: abs(p.offered_tpm.median / p.level - 1))
    deviation = worst.offered_tpm.median / worst.level - 1
    return (
        f"offered load: every point within {abs(deviation):.1%} of its label (largest gap: {worst.policy} at "
        f"{format_level(worst.level)} offered {format_level(worst.offered_tpm.median)})"
    )


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 1e3:.0f} ms" if value < 1 else f"{value:.2f} s"


def _spread_seconds(median: float, low: float, high: float) -> str:
    if math.isnan(median):
        return "-"
    return f"{_seconds(median)} [{_seconds(low)}-{_seconds(high)}]"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"
