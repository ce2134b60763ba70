"""The bench end to end: the CLI on a tiny sweep, determinism, trace replay, the example script."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokensched.benchmark import BenchConfig, SweepReport, format_level, parse_level, run_bench, sweep
from tokensched.benchmark.workloads import Trace
from tokensched.cli import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--duration", "60", "--warmup", "20", "--drain", "5"]


def tiny(**update: object) -> BenchConfig:
    fields: dict[str, object] = {"target_tpm": 1_000_000, "duration_s": 60, "warmup_s": 20, "drain_s": 5, **update}
    return BenchConfig.model_validate(fields)


def test_bench_sweeps_policies_and_seeds_and_writes_a_json_report_and_a_png(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "--levels", "1M,2M", "--policies", "vllm,trtllm", "--seeds", "2", "--out", str(out), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "KV capacity per profile" in result.output and "on trtllm" in result.output
    assert result.output.index("KV capacity") < result.output.index("coding-agent sessions")  # printed before
    assert "TTFT p50" in result.output and "offered TPM" in result.output and "served TPM" in result.output
    assert "offered load: every point within" in result.output and "x real time" in result.output
    report = SweepReport.model_validate_json((out / "bench.json").read_text())
    assert report.seeds == [0, 1]
    assert [(r.config.policy, r.config.target_tpm, r.config.seed) for r in report.results] == [
        (policy, level, seed) for policy in ("vllm", "trtllm") for level in (1e6, 2e6) for seed in (0, 1)
    ]
    assert [(p.policy, p.level, p.seeds) for p in report.points] == [
        (policy, level, [0, 1]) for policy in ("vllm", "trtllm") for level in (1e6, 2e6)
    ]
    for point in report.points:
        runs = [r for r in report.results if r.config.policy == point.policy and r.config.target_tpm == point.level]
        p50s = sorted(r.metrics.ttft_s.p50 for r in runs)
        assert (point.ttft_p50_s.low, point.ttft_p50_s.high) == (p50s[0], p50s[-1])
        assert point.overloaded_seeds == sum(r.metrics.overloaded for r in runs)
    assert {p.num_gpus for p in report.points} == {4}
    assert all(r.metrics.num_requests > 0 and 65 <= r.run.sim_time_s < 75 for r in report.results)
    json.loads((out / "bench.json").read_text())  # plain JSON (NaN written as null)
    png = (out / "bench.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_bench_over_concurrency_levels(tmp_path: Path) -> None:
    args = ["bench", "--concurrency", "2,4", "--policies", "vllm", "--seeds", "1", "--out", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--no-plot", *TINY])
    assert result.exit_code == 0, result.output
    report = SweepReport.model_validate_json((tmp_path / "bench.json").read_text())
    assert report.level_kind == "concurrency"
    assert [r.config.concurrency for r in report.results] == [2, 4]
    assert not (tmp_path / "bench.png").exists()


def test_reproduce_prints_published_beside_simulated_with_ratio_and_writes_json(tmp_path: Path) -> None:
    args = ["bench", "--reproduce", "coding-agent-b200", "--seeds", "1", "--levels", "2.5M", "--no-plot", "--out"]
    args += [str(tmp_path), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "published vs simulated" in result.output and "1.10 s" in result.output and "5.10 s" in result.output
    comparison = json.loads((tmp_path / "reproduce.json").read_text())
    rows = {row["profile"]: row for row in comparison["rows"]}
    assert set(rows) == {None, "trtllm-latency", "sglang-tp8", "sglang-tp8-dp"}
    assert [row["sensitivity"] for row in comparison["rows"]] == [False, False, False, True]
    assert rows[None]["simulated_s"] is None and rows[None]["verdict"] is None  # Together's engine has no profile
    for profile, published in (("trtllm-latency", 1.1), ("sglang-tp8", 5.1), ("sglang-tp8-dp", 5.1)):
        row = rows[profile]
        assert len(row["seed_p50s_s"]) == len(row["seed_overloaded"]) == 1
        if row["verdict"] == "steady":
            assert row["ratio"] == pytest.approx(row["steady_s"]["median"] / published)
            assert f"{row['ratio']:.2f}x" in result.output
        else:
            assert row["verdict"] == "overloaded" and row["ratio"] is None  # one seed cannot be a cliff
            assert "OVERLOADED in 1 of 1 seeds" in result.output
    if all(rows[p]["verdict"] == "steady" for p in ("trtllm-latency", "sglang-tp8")):
        simulated_order = rows["trtllm-latency"]["steady_s"]["median"] < rows["sglang-tp8"]["steady_s"]["median"]
        assert comparison["order_matches"] is simulated_order  # published: TensorRT-LLM 1.1 s before SGLang 5.1 s
        assert ("order as published" if simulated_order else "order NOT as published") in result.output
    report = SweepReport.model_validate_json((tmp_path / "bench.json").read_text())
    assert {p.num_gpus for p in report.points if p.policy == "sglang-tp8"} == {8}


def test_answer_names_the_best_tokensched_policy_and_its_ratio_to_each_baseline(tmp_path: Path) -> None:
    args = ["bench", "--answer", "--levels", "500k,1M", "--seeds", "1", "--no-plot", "--out", str(tmp_path), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    answer = json.loads((tmp_path / "answer.json").read_text())
    assert [b["policy"] for b in answer["best"]] == ["prefix-aware", "retain", "slo", "trtllm", "vllm"]
    assert set(answer["ratios"]) == {"trtllm", "vllm"}
    report = SweepReport.model_validate_json((tmp_path / "bench.json").read_text())
    qualifying = {
        p.policy: p.served_tpm_per_gpu
        for p in report.points
        if not p.overloaded and p.ttft_p50_s.median <= 1.0 and p.tps_per_user_p50.median >= 70
    }
    ours = {policy: tpm for policy, tpm in qualifying.items() if policy in ("prefix-aware", "retain", "slo")}
    if ours:
        assert answer["winner"] in ours
    assert "Most served TPM per GPU" in result.output


def test_trace_recorded_by_the_cli_replays_to_the_same_metrics(tmp_path: Path) -> None:
    trace_path = tmp_path / "trace.jsonl"
    common = ["bench", "--policies", "sglang-tp8", "--seeds", "1", "--no-plot", *TINY]
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
    result, _ = run_bench(tiny(policy="trtllm", target_tpm=1_000_000, duration_s=240, warmup_s=60, drain_s=10))
    m = result.metrics
    assert m.num_requests > 5
    assert m.prefix_cache_hit_rate > 0.5  # each turn extends the previous prompt and answer
    assert m.num_censored == 0 and m.ttft_s.p50 < 1.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--policies", "lifo"], "--policies: unknown lifo"),
        (["--policies", ","], "--policies: no policy given"),
        (["--levels", "lots"], "not a load level"),
        (["--duration", "10", "--warmup", "20"], "warmup_s"),
        (["--gpu", "tpu-v9"], "tpu-v9"),
        (["--tp", "2", "--policies", "vllm"], "short of room for a KV cache"),
        (["--gpu", "h100", "--tp", "8", "--policies", "vllm"], "GB per rank short"),
        (["--seed", "-1"], "--seed must be >= 0, got -1"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--block-size", "1000000"], "--block-size must be within 1..4096"),
        (["--kv-dtype", "int4"], "--kv-dtype 'int4' is not supported; use fp8 or bf16"),
        (["--spec-tokens", "2", "--spec-acceptance", "5"], "exceeds what 2 drafts"),
        (["--reproduce", "nope"], "--reproduce: unknown setup"),
    ],
)
def test_bad_arguments_get_one_line_and_exit_2_before_anything_runs(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert "Traceback" not in result.output and not out.exists()


def test_an_unwritable_out_is_refused_before_the_sweep(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["bench", "--out", str(blocker / "out"), *TINY])
    assert result.exit_code == 2
    assert result.output.startswith("error: --out") and "cannot write there" in result.output
    assert "KV capacity" not in result.output  # nothing ran


def test_a_subprocess_shows_no_traceback_for_a_bad_tp() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tokensched"), "bench", "--tp", "2", "--policies", "vllm"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and "weights take" in done.stderr


def test_help_lists_the_bench_subcommand() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0 and "bench" in result.output


def test_levels_parse_and_format_with_k_and_m_suffixes() -> None:
    assert [parse_level(x) for x in ("500k", "2.5M", "1200000", " 3m ")] == [5e5, 2.5e6, 1.2e6, 3e6]
    assert [format_level(x) for x in (5e5, 2.5e6, 1.2e6, 8)] == ["500k", "2.5M", "1.2M", "8"]


def test_example_script_runs_one_level_and_prints_the_summary() -> None:
    script = ROOT / "examples" / "bench_coding_agent.py"
    done = subprocess.run(
        [sys.executable, str(script), "--duration", "60", "--warmup", "20", "--policy", "sglang-tp8"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert "TTFT p50/p90/p99" in done.stdout and "x real time" in done.stdout


def test_a_sweep_can_skip_the_levels_above_a_policys_first_overloaded_point() -> None:
    base = tiny(policy="vllm")
    report = sweep(base, ["vllm"], [8e6, 12e6], seeds=1, skip_after_overload=True)
    assert [p.level for p in report.points] == [8e6]
    assert report.points[0].overloaded  # vLLM's 492k tokens of KV cannot keep up with 8M TPM
    assert report.skipped == ["vllm@12M"]
