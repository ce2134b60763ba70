"""The ``tokensched`` command: a typer app whose subcommands are thin layers over the library.

``tokensched bench`` sweeps load levels of the coding-agent workload over the
simulated GPU for each policy, prints each policy's degradation curve, and
writes ``bench.json`` and ``bench.png`` into the output folder. Add a
subcommand with ``@app.command()``; keep the work in the library.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tokensched.benchmark import PROFILES, BenchConfig, SweepReport, format_level, make_deployment, parse_level, sweep
from tokensched.benchmark.report import plot_sweep
from tokensched.benchmark.workloads import Trace
from tokensched.cluster.cli import cluster_command
from tokensched.errors import TokenschedError
from tokensched.server.cli import serve_command

app = typer.Typer(
    name="tokensched",
    help="A typed finite-state-machine scheduler for LLM inference.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_POLICIES = "vllm,sglang,prefix-aware,retain"
DEFAULT_LEVELS = "0.5M,1M,1.5M,2M,2.5M,3M"


@app.callback()
def _root() -> None:
    """A typed finite-state-machine scheduler for LLM inference."""


@app.command()
def bench(
    policies: Annotated[str, typer.Option(help=f"comma-separated, from: {', '.join(PROFILES)}")] = DEFAULT_POLICIES,
    levels: Annotated[str, typer.Option(help="offered TPM levels (input tokens/min), e.g. 500k,2.5M")] = DEFAULT_LEVELS,
    concurrency: Annotated[
        str | None, typer.Option(help="sweep sessions kept running instead of TPM, e.g. 2,4,8")
    ] = None,
    model: Annotated[str, typer.Option(help="model preset of the simulator")] = "kimi-k2.5",
    gpu: Annotated[str, typer.Option(help="GPU preset of the simulator")] = "b200",
    tp: Annotated[int, typer.Option(help="tensor-parallel GPUs")] = 4,
    kv_dtype: Annotated[
        str, typer.Option(help="KV cache dtype: fp8 (how MLA models are served on Blackwell) or bf16")
    ] = "fp8",
    duration: Annotated[float, typer.Option(help="simulated seconds of measured arrivals")] = 300.0,
    warmup: Annotated[float, typer.Option(help="simulated seconds before measuring")] = 60.0,
    drain: Annotated[float, typer.Option(help="simulated seconds of load after the measured window")] = 30.0,
    seed: Annotated[int, typer.Option(help="seeds the workload and the simulator")] = 0,
    ttft_slo: Annotated[float, typer.Option(help="TTFT target in seconds (SLO policy, attainment)")] = 10.0,
    block_size: Annotated[int, typer.Option(help="KV block size in tokens")] = 64,
    out: Annotated[Path, typer.Option(help="output folder for bench.json and bench.png")] = Path("out"),
    trace_in: Annotated[
        Path | None, typer.Option(help="replay this JSONL trace instead of --levels (same --duration etc. as recorded)")
    ] = None,
    trace_out: Annotated[Path | None, typer.Option(help="record the workload as JSONL here")] = None,
    plot: Annotated[bool, typer.Option(help="write bench.png (needs matplotlib)")] = True,
) -> None:
    """Sweep load levels of coding-agent sessions on the simulated GPU and compare policies."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=max(console.width, 140))  # logs and pipes: keep table rows on one line
    try:
        chosen = _split(policies)
        unknown = [p for p in chosen if p not in PROFILES]
        if unknown:
            raise typer.BadParameter(
                f"unknown policies {unknown}; known: {', '.join(PROFILES)}", param_hint="--policies"
            )
        points = [parse_level(x) for x in _split(concurrency or levels)]
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
        )
        make_deployment(base)  # unknown presets fail here, before any run
        trace = Trace.load(trace_in) if trace_in is not None else None
    except (ValueError, TokenschedError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    report = _run_with_progress(console, base, chosen, points, trace, trace_out)
    for policy in chosen:
        console.print(_curve_table(report, policy))
    if any(r.metrics.num_censored for r in report.results):
        console.print("* counts requests still waiting at the end with their wait so far (a lower bound)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(report.model_dump_json(indent=2) + "\n", encoding="utf-8")
    console.print(f"report: {out / 'bench.json'}")
    if plot:
        console.print(f"plot:   {plot_sweep(report, out / 'bench.png')}")
    console.print(
        f"simulated {report.sim_time_s:,.0f} s in {report.wall_s:,.1f} s wall "
        f"({report.speedup:,.0f}x real time; {report.cpu_s:,.1f} s CPU)"
    )


def _run_with_progress(
    console: Console,
    base: BenchConfig,
    policies: list[str],
    levels: list[float],
    trace: Trace | None,
    trace_out: Path | None,
) -> SweepReport:
    runs = len(policies) * (1 if trace is not None else len(levels))
    columns = (TextColumn("{task.description:<24}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"))
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("simulating", total=float(runs))
        done: dict[tuple[str, float], float] = {}

        def advance(policy: str, level: float, fraction: float) -> None:
            done[(policy, level)] = fraction
            bar.update(task, completed=sum(done.values()), description=f"{policy} @ {format_level(level)}")

        report = sweep(base, policies, levels, trace=trace, trace_out=trace_out, progress=advance)
        bar.update(task, completed=float(runs), description="done")
    return report


def _curve_table(report: SweepReport, policy: str) -> Table:
    curve = report.curve(policy)
    level_name = "sessions" if report.level_kind == "concurrency" else "target"
    table = Table(title=f"[bold]{policy}[/bold]", caption=curve[0].profile if curve else None, caption_justify="left")
    headers = (level_name, "TPM (/GPU)", "TTFT p50", "TTFT p99", "SLO met", "ITL p50", "TPS/user")
    for name in (*headers, "tok/s/GPU", "cache hit", "preempt", "queue", "KV"):
        table.add_column(name, justify="right")
    for r in curve:
        m = r.metrics
        table.add_row(
            format_level(report.level_of(r)),
            f"{format_level(m.tpm)} ({format_level(m.tpm_per_gpu)})",
            _seconds(m.ttft_s.p50),
            _seconds(m.ttft_s.p99) + ("*" if m.num_censored else ""),
            _percent(m.ttft_slo_attainment),
            _seconds(m.itl_s.p50),
            _number(m.tps_per_user.p50),
            _number(m.output_tps_per_gpu),
            _percent(m.prefix_cache_hit_rate),
            str(m.num_preemptions),
            _number(m.queue_len_mean),
            _percent(m.kv_usage_mean),
        )
    return table


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _seconds(value: float) -> str:
    if math.isnan(value):
        return "-"
    return f"{value * 1e3:.1f} ms" if value < 1 else f"{value:.2f} s"


def _percent(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _number(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


@app.command()
def specs(
    check: Annotated[bool, typer.Option(help="exit 1 if docs/machines is stale instead of writing it")] = False,
) -> None:
    """Regenerate the machines' Mermaid diagrams and docs (docs/machines/) from specs/."""
    from tokensched.machines.specdoc import main as specdoc_main

    raise typer.Exit(specdoc_main(["--check"] if check else []))


app.command("serve")(serve_command)
app.command("cluster")(cluster_command)


def main() -> None:
    """Entry point of the ``tokensched`` script."""
    app()
