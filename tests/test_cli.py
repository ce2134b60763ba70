"""The bench end to end: the CLI on a tiny sweep, determinism, trace replay, the example script."""

import json
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from tokensched.benchmark import BenchConfig, SweepReport, format_level, parse_level, run_bench
from tokensched.benchmark.workloads import Trace
from tokensched.cli import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--duration", "60", "--warmup", "20", "--drain", "5"]


def tiny(**update: object) -> BenchConfig:
    fields: dict[str, object] = {"target_tpm": 1_000_000, "duration_s": 60, "warmup_s": 20, "drain_s": 5, **update}
    return BenchConfig.model_validate(fields)


def test_bench_sweeps_policies_and_writes_a_json_report_and_a_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "--levels", "1M,2M", "--policies", "vllm,sglang", "--out", str(out), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "vllm" in result.output and "sglang" in result.output and "TTFT p50" in result.output
    assert "x real time" in result.output
    report = SweepReport.model_validate_json((out / "bench.json").read_text())
    assert [(r.config.policy, r.config.target_tpm) for r in report.results] == [
        ("vllm", 1_000_000),
        ("vllm", 2_000_000),
        ("sglang", 1_000_000),
        ("sglang", 2_000_000),
    ]
    assert all(r.metrics.num_requests > 0 and 65 <= r.run.sim_time_s < 75 for r in report.results)
    assert report.sim_time_s > 0 and report.speedup > 0
    json.loads((out / "bench.json").read_text())  # plain JSON (NaN written as null)
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_bench_over_concurrency_levels(tmp_path: Path) -> None:
    args = ["bench", "--concurrency", "2,4", "--policies", "vllm", "--out", str(tmp_path), "--no-plot", *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = SweepReport.model_validate_json((tmp_path / "bench.json").read_text())
    assert report.level_kind == "concurrency"
    assert [r.config.concurrency for r in report.results] == [2, 4]
    assert not (tmp_path / "bench.png").exists()


def test_trace_recorded_by_the_cli_replays_to_the_same_metrics(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.jsonl"
    common = ["bench", "--policies", "sglang", "--no-plot", *TINY]
    first = CliRunner().invoke(
        app, [*common, "--levels", "1M", "--out", str(tmp_path / "a"), "--trace-out", str(trace_path)]
    )
    assert first.exit_code == 0, first.output
    assert Trace.load(trace_path).header.target_tpm == 1_000_000
    second = CliRunner().invoke(app, [*common, "--trace-in", str(trace_path), "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    recorded = SweepReport.model_validate_json((tmp_path / "a" / "bench.json").read_text())
    replayed = SweepReport.model_validate_json((tmp_path / "b" / "bench.json").read_text())
    assert replayed.level_kind == "tpm" and replayed.trace is not None
    assert replayed.results[0].metrics.model_dump_json() == recorded.results[0].metrics.model_dump_json()


def test_same_seed_gives_an_identical_report_and_another_seed_does_not() -> None:
    first, _ = run_bench(tiny(seed=3))
    again, _ = run_bench(tiny(seed=3))
    other, _ = run_bench(tiny(seed=4))
    assert first.deterministic_json() == again.deterministic_json()
    assert first.metrics.model_dump_json() != other.metrics.model_dump_json()


def test_replaying_the_returned_trace_reproduces_the_run() -> None:
    config = tiny(policy="prefix-aware", target_tpm=2_000_000)
    result, trace = run_bench(config)
    assert trace.sessions
    replayed, _ = run_bench(config, trace=Trace.model_validate_json(trace.model_dump_json()))
    assert replayed.deterministic_json() == result.deterministic_json()


def test_later_turns_hit_the_prefix_cache_when_the_load_is_light() -> None:
    result, _ = run_bench(tiny(target_tpm=300_000, duration_s=240, warmup_s=30, drain_s=10))
    m = result.metrics
    assert m.num_requests > 5
    assert m.prefix_cache_hit_rate > 0.5  # each turn extends the previous prompt and answer
    assert m.num_censored == 0 and m.ttft_s.p50 < 1.0


def test_bad_options_are_reported_without_a_traceback(tmp_path: Path) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["bench", "--policies", "lifo", "--out", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown policies" in unknown.output
    level = runner.invoke(app, ["bench", "--levels", "lots", "--out", str(tmp_path)])
    assert level.exit_code == 2 and "not a load level" in level.output
    window = runner.invoke(app, ["bench", "--duration", "10", "--warmup", "20", "--out", str(tmp_path)])
    assert window.exit_code == 2 and "warmup_s" in window.output
    preset = runner.invoke(app, ["bench", "--gpu", "tpu-v9", "--out", str(tmp_path)])
    assert preset.exit_code == 2 and "tpu-v9" in preset.output


def test_help_lists_the_bench_subcommand() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "bench" in result.output


def test_levels_parse_and_format_with_k_and_m_suffixes() -> None:
    assert [parse_level(x) for x in ("500k", "2.5M", "1200000", " 3m ")] == [5e5, 2.5e6, 1.2e6, 3e6]
    assert [format_level(x) for x in (5e5, 2.5e6, 1.2e6, 8)] == ["500k", "2.5M", "1.2M", "8"]


def test_example_script_runs_one_level_and_prints_the_summary() -> None:
    script = ROOT / "examples" / "bench_coding_agent.py"
    done = subprocess.run(
        [sys.executable, str(script), "--duration", "20", "--warmup", "5", "--policy", "sglang"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "TTFT p50/p90/p99" in done.stdout and "x real time" in done.stdout
