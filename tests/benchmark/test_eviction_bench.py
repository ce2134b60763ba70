"""``tokensched bench --eviction``: one run per eviction policy, the same as the sweep's run when nothing is pinned."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tokensched.benchmark import BenchConfig, run_bench
from tokensched.benchmark.eviction import (
    SYSTEM_PROMPT_TOKENS,
    EvictionReport,
    compare_evictions,
    parse_evictions,
    run_eviction,
    system_prompt,
)
from tokensched.benchmark.workloads import CodingAgentConfig, CodingAgentSource, SessionWorkload
from tokensched.cli import app

TINY = ["--duration", "60", "--warmup", "20", "--drain", "5"]


def tiny(**update: object) -> BenchConfig:
    fields: dict[str, object] = {"target_tpm": 1_000_000, "duration_s": 60, "warmup_s": 20, "drain_s": 5, **update}
    return BenchConfig.model_validate(fields)


def test_an_lru_run_matches_the_sweep_run_of_the_same_config() -> None:
    """The comparison rebuilds run_bench around drive(): the same config must give the same metrics."""
    config = tiny(policy="vllm")
    expected = run_bench(config)[0].metrics
    row = run_eviction(config, "lru")
    assert row.pinned_blocks == 0 and expected.num_finished > 0
    assert (row.prefix_cache_hit_rate, row.ttft_p50_s, row.ttft_p90_s, row.num_preemptions, row.requests_finished) == (
        expected.prefix_cache_hit_rate,
        expected.ttft_s.p50,
        expected.ttft_s.p90,
        expected.num_preemptions,
        expected.num_finished,
    )


def test_pinned_pins_the_shared_system_prompt_and_the_others_pin_nothing() -> None:
    report = compare_evictions(tiny(policy="vllm"), [1_000_000], ["lru", "pinned"])
    lru, pinned = report.rows
    assert lru.pinned_blocks == 0
    assert pinned.pinned_blocks == SYSTEM_PROMPT_TOKENS // 64  # every full block of the prompt, the cap
    assert report.system_prompt_tokens == SYSTEM_PROMPT_TOKENS and lru.requests_finished > 0


def test_bench_eviction_prints_a_table_and_writes_eviction_json(tmp_path: Path) -> None:
    args = ["bench", "--eviction", "lru,cost", "--levels", "1M", "--policies", "vllm", "--out", str(tmp_path), *TINY]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| 1,000,000 | cost |" in result.output
    report = EvictionReport.model_validate_json((tmp_path / "eviction.json").read_text())
    assert [r.eviction for r in report.rows] == ["lru", "cost"] and report.profile == "vllm"
    assert not (tmp_path / "bench.json").exists()  # instead of the sweep


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--eviction", "lru,mru"], "--eviction: unknown mru; known: lru, lfu, cost, pinned"),
        (["--eviction", ","], "--eviction: unknown none given"),
        (["--eviction", "lru", "--concurrency", "2"], "not at --concurrency"),
    ],
)
def test_bad_eviction_arguments_get_one_line_and_exit_2(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["bench", *args, "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "eviction.json").exists()


def test_parse_evictions_keeps_the_given_order() -> None:
    assert parse_evictions(" pinned, lru ") == ["pinned", "lru"]


def test_the_pinned_tokens_are_the_prefix_every_session_opens_with() -> None:
    """system_prompt() derives the prompt as the workload does: what is pinned is what requests hash."""
    config = tiny(workload=CodingAgentConfig(shared_prefix_tokens=1000))
    source = CodingAgentSource(config.workload, config.arrivals, 60.0, config.seed)
    workload = SessionWorkload(source, ttft_deadline_s=10.0, eos_token_id=0)
    prompt = system_prompt(workload.header)
    firsts = [spec for spec in workload.release(60.0)]
    assert len(prompt) == 1000 and len(firsts) >= 2
    assert all(list(spec.prompt_token_ids[:1000]) == prompt and spec.cache_salt is None for spec in firsts)
