"""``tokensched serve``: the OpenAI-compatible server over the simulated GPU or the tiny torch model.

Register it in the main CLI with ``app.command("serve")(serve_command)``.
This module imports only typer; FastAPI, uvicorn and the executors load when
the command runs, so the CLI works without the ``server`` extra until
``serve`` is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from fastapi import FastAPI

    from tokensched.server.settings import ServerSettings


class Backend(StrEnum):
    SIM = "sim"
    TORCH = "torch"


def build_app(
    backend: Backend,
    settings: ServerSettings,
    *,
    policy: str = "fcfs",
    sim_model: str = "dense-8b",
    sim_gpu: str = "h100",
    tp: int = 1,
    num_blocks: int | None = None,
    block_size: int = 16,
    realtime: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
    tokenizer_path: str | None = None,
    config: Mapping[str, object | None] | None = None,
) -> FastAPI:
    """The app ``serve`` runs; ``config`` goes to :class:`~tokensched.SchedulerConfig` (None values: defaults)."""
    from tokensched.policies import POLICIES
    from tokensched.server.app import create_app
    from tokensched.server.launch import sim_backend, torch_backend

    if policy not in POLICIES:
        raise typer.BadParameter(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}", param_hint="policy")
    chosen = POLICIES[policy]()
    overrides = {k: v for k, v in (config or {}).items() if v is not None}
    if backend is Backend.SIM:
        runner, tokenizer = sim_backend(
            model=sim_model,
            gpu=sim_gpu,
            tp=tp,
            num_kv_blocks=num_blocks,
            block_size=block_size,
            seed=seed,
            realtime=realtime if realtime > 0 else None,
            policy=chosen,
            config=overrides,
        )
    else:
        try:
            runner, tokenizer = torch_backend(
                num_blocks=num_blocks or 2048,
                block_size=block_size,
                seed=seed,
                device=device,
                policy=chosen,
                config=overrides,
            )
        except (RuntimeError, AssertionError) as exc:  # torch's own words for a device it cannot use
            raise typer.BadParameter(f"cannot run the tiny model on {device!r}: {exc}", param_hint="device") from exc
    if tokenizer_path is not None:
        from tokensched.server.hf_tokenizer import HFTokenizer

        tokenizer = HFTokenizer.from_path(tokenizer_path)
    return create_app(runner, tokenizer, settings)


class LogLevel(StrEnum):
    CRITICAL = "critical"
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"
    DEBUG = "debug"
    TRACE = "trace"


API_KEY_ENV = "TOKENSCHED_API_KEY"


def serve_command(
    executor: Annotated[Backend, typer.Option(help="sim: a simulated GPU; torch: the tiny MLA model")] = Backend.SIM,
    host: Annotated[str, typer.Option(help="address to bind; loopback unless you mean to expose it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one)")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar=API_KEY_ENV, help="require 'Authorization: Bearer <key>' on /v1")
    ] = None,
    model_name: Annotated[str, typer.Option(help="the model name clients send and /v1/models lists")] = "tokensched",
    policy: Annotated[str, typer.Option(help="fcfs, priority, prefix-aware or slo")] = "fcfs",
    sim_model: Annotated[str, typer.Option(help="simulated model preset")] = "dense-8b",
    sim_gpu: Annotated[str, typer.Option(help="simulated GPU preset")] = "h100",
    tp: Annotated[int, typer.Option(min=1, help="simulated tensor-parallel degree")] = 1,
    realtime: Annotated[
        float, typer.Option(min=0.0, help="wall seconds per simulated second (0: as fast as possible)")
    ] = 1.0,
    num_blocks: Annotated[int | None, typer.Option(help="KV blocks (default: what the executor holds)")] = None,
    block_size: Annotated[int, typer.Option(help="tokens per KV block")] = 16,
    max_model_len: Annotated[
        int | None, typer.Option(help="context length (prompt + output); lowered to what the KV pool holds")
    ] = None,
    max_running: Annotated[int | None, typer.Option(help="requests in the running set at most")] = None,
    max_waiting: Annotated[int, typer.Option(help="waiting requests beyond this get 429")] = 1024,
    max_batched_tokens: Annotated[int | None, typer.Option(help="token budget of one step")] = None,
    max_body_bytes: Annotated[
        int, typer.Option(envvar="TOKENSCHED_MAX_BODY_BYTES", help="larger request bodies get 413")
    ] = 1 << 20,
    max_connections: Annotated[
        int,
        typer.Option(
            envvar="TOKENSCHED_MAX_CONNECTIONS",
            help="open connections at most (kept below the file-descriptor limit); past it idle ones are closed",
        ),
    ] = 1000,
    header_timeout: Annotated[
        float, typer.Option(envvar="TOKENSCHED_HEADER_TIMEOUT", help="seconds a connection has to send its head")
    ] = 10.0,
    body_timeout: Annotated[
        float,
        typer.Option(
            envvar="TOKENSCHED_BODY_TIMEOUT",
            help="seconds a request has, from its head, to send its whole body (past it 408)",
        ),
    ] = 30.0,
    keep_alive_timeout: Annotated[
        float, typer.Option(envvar="TOKENSCHED_KEEP_ALIVE_TIMEOUT", help="seconds an idle keep-alive connection lives")
    ] = 5.0,
    max_requests_per_client: Annotated[
        int | None,
        typer.Option(envvar="TOKENSCHED_MAX_REQUESTS_PER_CLIENT", help="unfinished requests per client address"),
    ] = 256,
    drain_timeout: Annotated[
        float,
        typer.Option(envvar="TOKENSCHED_DRAIN_TIMEOUT", help="seconds running requests get on SIGTERM before abort"),
    ] = 5.0,
    stats_interval: Annotated[
        float, typer.Option(envvar="TOKENSCHED_STATS_INTERVAL", help="seconds between stats log lines (0: none)")
    ] = 10.0,
    metrics_prefix: Annotated[
        str,
        typer.Option(
            envvar="TOKENSCHED_METRICS_PREFIX",
            help="tokensched or vllm: 'vllm' names shared metrics vllm:* for vLLM's Grafana dashboard",
        ),
    ] = "tokensched",
    tokenizer: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENSCHED_TOKENIZER",
            help="a Hugging Face tokenizer.json (or its folder, with tokenizer_config.json for the chat template)",
        ),
    ] = None,
    default_max_tokens: Annotated[int, typer.Option(help="when a request names no max_tokens")] = 256,
    kv_events_endpoint: Annotated[
        str | None,
        typer.Option(
            envvar="TOKENSCHED_KV_EVENTS_ENDPOINT",
            help="publish vLLM-format KV events on a ZMQ PUB socket bound here, e.g. tcp://127.0.0.1:5557 "
            "(the kv-events extra; see docs/cluster.md)",
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="seed of the simulator's tokens or the tiny model's weights")] = 0,
    device: Annotated[str, typer.Option(help="torch device for the tiny model")] = "cpu",
    log_level: Annotated[LogLevel, typer.Option(help="log level")] = LogLevel.INFO,
) -> None:
    """Serve the scheduler over HTTP with OpenAI's completions and chat APIs, /metrics and /health."""
    import os

    from pydantic import ValidationError

    from tokensched.server.launch import serve
    from tokensched.server.settings import ServerSettings

    if api_key is None and API_KEY_ENV in os.environ:
        api_key = os.environ[API_KEY_ENV]  # click ignores an empty variable; an empty key must fail, not disable auth
    try:
        settings = ServerSettings(
            host=host,
            port=port,
            api_key=api_key,
            model_name=model_name,
            max_body_bytes=max_body_bytes,
            default_max_tokens=default_max_tokens,
            max_connections=max_connections,
            header_timeout_s=header_timeout,
            body_timeout_s=body_timeout,
            keep_alive_timeout_s=keep_alive_timeout,
            max_requests_per_client=max_requests_per_client,
            drain_timeout_s=drain_timeout,
            stats_interval_s=stats_interval,
            metrics_prefix=metrics_prefix,  # type: ignore[arg-type]
        )
        app = build_app(
            executor,
            settings,
            policy=policy,
            sim_model=sim_model,
            sim_gpu=sim_gpu,
            tp=tp,
            num_blocks=num_blocks,
            block_size=block_size,
            realtime=realtime,
            seed=seed,
            device=device,
            tokenizer_path=tokenizer,
            config={
                "max_model_len": max_model_len,
                "max_running": max_running,
                "max_waiting": max_waiting,
                "max_batched_tokens": max_batched_tokens,
            },
        )
        if kv_events_endpoint is not None:
            from tokensched.kv_events import ZmqKVEventPublisher

            ZmqKVEventPublisher(kv_events_endpoint).attach(app.state.runner.scheduler)
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    serve(app, settings, log_level=log_level.value)
    # Drained and stopped: exit now. Tearing down the interpreter would free the KV pool's and the prefix
    # cache's objects one by one (0.6 s measured for the simulator's 25,650 blocks) for nobody's benefit.
    import logging
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


app = typer.Typer(add_completion=False, help="The tokensched OpenAI-compatible server.")


@app.callback()
def _group() -> None:
    """Keeps ``serve`` a subcommand (typer would otherwise fold a lone command into the app)."""


app.command("serve")(serve_command)

if __name__ == "__main__":
    app()
