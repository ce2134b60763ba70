"""Start-up: auth fails closed, bad options exit 2 without a traceback, the banner and stats line tell the truth."""

from __future__ import annotations

import httpx
import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.server.conftest import MODEL, live_server, wait_for
from tests.server.subprocess_server import child_server
from tokensched.server.cli import app
from tokensched.server.launch import sim_backend
from tokensched.server.settings import ServerSettings


@pytest.mark.parametrize("key", ["", "   ", "\t\n", " padded "])
def test_a_blank_or_padded_api_key_is_refused(key: str) -> None:
    with pytest.raises(ValidationError, match="api_key"):
        ServerSettings(api_key=key)


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["serve", *args], env={"COLUMNS": "240", **(env or {})})
    return result.exit_code, result.output


def test_an_empty_api_key_variable_refuses_to_start_instead_of_serving_without_auth() -> None:
    code, output = invoke(env={"TOKENSCHED_API_KEY": ""})
    assert code == 2
    assert "api_key is empty" in output


def test_a_zero_body_timeout_from_the_environment_is_refused() -> None:
    code, output = invoke(env={"TOKENSCHED_BODY_TIMEOUT": "0"})
    assert code == 2, output
    assert "body_timeout_s" in output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--log-level", "foo"], "--log-level"),
        (["--realtime", "-1"], "--realtime"),
        (["--metrics-prefix", "prom"], "metrics_prefix"),
        (["--max-connections", "0"], "max_connections"),
        (["--drain-timeout", "-1"], "drain_timeout_s"),
        (["--body-timeout", "0"], "body_timeout_s"),
        (["--tokenizer", "/nonexistent/tokenizer.json"], "no tokenizer at"),
    ],
)
def test_bad_options_exit_2_with_a_message_not_a_traceback(args: list[str], needle: str) -> None:
    code, output = invoke(*args)
    assert code == 2, output
    assert needle in output
    assert "Traceback" not in output


def test_a_device_torch_cannot_use_is_a_bad_parameter() -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, output = invoke("--executor", "torch", "--device", "cuda")
    assert code == 2, output
    assert "cannot run the tiny model on 'cuda'" in output


def test_max_model_len_is_what_the_pool_holds_and_a_prompt_near_it_is_served() -> None:
    runner, tokenizer = sim_backend(num_kv_blocks=64, realtime=None)  # 64 blocks x 16 tokens
    with live_server(runner, tokenizer) as live:
        card = httpx.get(live.v1 + "/models", timeout=10).json()["data"][0]
        assert card["max_model_len"] == 64 * 16 + 1  # the scheduler counts prompt + max_tokens - 1 tokens of KV
        response = httpx.post(live.v1 + "/completions", json={"model": MODEL, "prompt": "x" * 1000}, timeout=30)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 25  # the room left, not the default 256


def test_the_banner_states_auth_pool_context_and_address_and_a_stats_line_follows() -> None:
    secret = "s3cret-key"
    args = ("--num-blocks", "64", "--api-key", secret, "--stats-interval", "0.2", "--policy", "prefix-aware")
    with child_server(*args) as child:
        headers = {"Authorization": f"Bearer {secret}"}
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 4}
        assert httpx.post(child.url + "/v1/completions", json=body, headers=headers, timeout=10).status_code == 200
        assert httpx.post(child.url + "/v1/completions", json=body, timeout=10).status_code == 401
        idle_line = "Running: 0 reqs, Waiting: 0 reqs, KV cache usage:"
        assert wait_for(lambda: any(idle_line in line for line in child.log_lines()))
        log = "\n".join(child.log_lines())
    assert "auth on" in log
    assert secret not in log
    assert f"at http://127.0.0.1:{child.port}/v1" in log
    assert "KV pool 64 blocks x 16 tokens = 1024 tokens; max_model_len 1025" in log
    assert "executor SimExecutor, policy prefix-aware" in log
    assert "Avg prompt throughput: " in log and "Avg generation throughput: " in log


def test_the_banner_says_when_auth_is_off() -> None:
    with child_server("--stats-interval", "0") as child:
        log = "\n".join(child.log_lines())
    assert "auth OFF" in log


def test_with_port_0_the_banner_names_the_port_actually_bound() -> None:
    import re
    import signal
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "tokensched.server.cli", "serve", "--port", "0", "--stats-interval", "0"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            match = re.search(r"serving model 'tokensched' at http://127\.0\.0\.1:(\d+)/v1", line)
            if match:
                port = int(match.group(1))
                break
        else:
            raise AssertionError("no banner")
        assert port != 0
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
