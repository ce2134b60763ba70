"""The sensitivity script: each unpublished assumption reaches the run, and a setting reports what the seeds say."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.reproduce import Verdict
from tokensched.benchmark.sensitivity import ASSUMPTIONS, format_setting, main, run_setting

SHORT = {"duration_s": 60.0, "warmup_s": 20.0, "drain_s": 5.0}


def test_every_assumption_sets_a_valid_config_and_tries_its_default() -> None:
    for assumption in ASSUMPTIONS.values():
        assert assumption.default in assumption.values and len(assumption.values) >= 2
        for value in assumption.values:
            config = BenchConfig.model_validate({"policy": "sglang-tp8", **assumption.apply(value)})
            fields = {**config.model_dump(), **config.workload.model_dump()}
            assert value in fields.values()


def test_a_setting_reports_each_profiles_verdict_over_its_seeds_and_the_order() -> None:
    setting = run_setting(ASSUMPTIONS["rewrite-tail"], 8_000, ["trtllm-latency", "sglang-tp8"], seeds=2, window=SHORT)
    assert [c.profile for c in setting.cells] == ["trtllm-latency", "sglang-tp8"] and not setting.is_default
    for cell in setting.cells:
        assert len(cell.seed_p50s_s) == len(cell.seed_overloaded) == 2
        assert cell.verdict in set(Verdict)
        assert 2.0e6 < cell.offered_tpm_median < 3.0e6
    line = format_setting(ASSUMPTIONS["rewrite-tail"], setting)
    assert "8000 |" in line and "trtllm-latency:" in line and "order" in line


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(main)
    return app


def test_the_command_refuses_an_unknown_assumption_before_running() -> None:
    app = _app()
    result = CliRunner().invoke(app, ["--assumptions", "weather"])
    assert result.exit_code == 2 and "unknown or no assumption" in result.output


@pytest.mark.parametrize("profiles", ["", "nope"])
def test_the_command_refuses_a_bad_profile_list(profiles: str) -> None:
    app = _app()
    result = CliRunner().invoke(app, ["--profiles", profiles])
    assert result.exit_code == 2
