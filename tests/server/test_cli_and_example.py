"""``tokensched serve`` builds the right app; ``examples/serve.py`` runs end to end on loopback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tokensched.server.cli import Backend, app, build_app
from tokensched.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parents[2]


def test_serve_help_lists_the_options() -> None:
    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--executor", "--host", "--api-key", "--realtime", "--max-waiting", "--policy"):
        assert option in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--port", "70000"], "--port"), (["--max-waiting", "0"], "max_waiting"), (["--executor", "tpu"], "--executor")],
)
def test_bad_options_are_refused_before_serving(args: list[str], needle: str) -> None:
    result = CliRunner().invoke(app, ["serve", *args], env={"COLUMNS": "240"})
    assert result.exit_code == 2
    assert needle in result.output


@pytest.mark.parametrize("backend", list(Backend))
def test_build_app_serves_each_backend(backend: Backend) -> None:
    fastapi_app = build_app(backend, ServerSettings(), policy="prefix-aware", num_blocks=64, config={"max_waiting": 8})
    runner = fastapi_app.state.runner
    assert runner.config.num_blocks == 64
    assert runner.config.max_waiting == 8
    paths = {getattr(route, "path", "") for route in fastapi_app.routes}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics"} <= paths


def test_an_unknown_policy_is_a_bad_parameter() -> None:
    with pytest.raises(typer.BadParameter, match="unknown policy"):
        build_app(Backend.SIM, ServerSettings(), policy="lottery")


@pytest.mark.parametrize("flags", [[], ["--sim"]], ids=["torch", "sim"])
def test_the_example_serves_and_answers_one_chat(flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "serve.py"), "--port", "0", "--self-test", *flags],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("served on http://127.0.0.1:")


def test_neither_tokensched_nor_the_serve_command_imports_fastapi_until_it_runs() -> None:
    probe = (
        "import sys, tokensched, tokensched.server, tokensched.server.cli; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"
