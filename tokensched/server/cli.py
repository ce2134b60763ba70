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
        runner, tokenizer = torch_backend(
            num_blocks=num_blocks or 2048,
            block_size=block_size,
            seed=seed,
            device=device,
            policy=chosen,
            config=overrides,
        )
    return create_app(runner, tokenizer, settings)


def serve_command(
    executor: Annotated[Backend, typer.Option(help="sim: a simulated GPU; torch: the tiny MLA model")] = Backend.SIM,
    host: Annotated[str, typer.Option(help="address to bind; loopback unless you mean to expose it")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port (0 picks a free one)")] = 8000,
    api_key: Annotated[
        str | None, typer.Option(envvar="TOKENSCHED_API_KEY", help="require 'Authorization: Bearer <key>' on /v1")
    ] = None,
    model_name: Annotated[str, typer.Option(help="the model name clients send and /v1/models lists")] = "tokensched",
    policy: Annotated[str, typer.Option(help="fcfs, priority, prefix-aware or slo")] = "fcfs",
    sim_model: Annotated[str, typer.Option(help="simulated model preset")] = "dense-8b",
    sim_gpu: Annotated[str, typer.Option(help="simulated GPU preset")] = "h100",
    tp: Annotated[int, typer.Option(help="simulated tensor-parallel degree")] = 1,
    realtime: Annotated[float, typer.Option(help="wall seconds per simulated second (0: as fast as possible)")] = 1.0,
    num_blocks: Annotated[int | None, typer.Option(help="KV blocks (default: what the executor holds)")] = None,
    block_size: Annotated[int, typer.Option(help="tokens per KV block")] = 16,
    max_model_len: Annotated[int | None, typer.Option(help="context length (prompt + output)")] = None,
    max_running: Annotated[int | None, typer.Option(help="requests in the running set at most")] = None,
    max_waiting: Annotated[int, typer.Option(help="waiting requests beyond this get 429")] = 1024,
    max_batched_tokens: Annotated[int | None, typer.Option(help="token budget of one step")] = None,
    max_body_bytes: Annotated[int, typer.Option(help="larger request bodies get 413")] = 1 << 20,
    default_max_tokens: Annotated[int, typer.Option(help="when a request names no max_tokens")] = 256,
    seed: Annotated[int, typer.Option(help="seed of the simulator's tokens or the tiny model's weights")] = 0,
    device: Annotated[str, typer.Option(help="torch device for the tiny model")] = "cpu",
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Serve the scheduler over HTTP with OpenAI's completions and chat APIs, /metrics and /health."""
    from pydantic import ValidationError

    from tokensched.server.launch import serve
    from tokensched.server.settings import ServerSettings

    try:
        settings = ServerSettings(
            host=host,
            port=port,
            api_key=api_key,
            model_name=model_name,
            max_body_bytes=max_body_bytes,
            default_max_tokens=default_max_tokens,
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
            config={
                "max_model_len": max_model_len,
                "max_running": max_running,
                "max_waiting": max_waiting,
                "max_batched_tokens": max_batched_tokens,
            },
        )
    except (ValidationError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    typer.echo(f"tokensched: serving {executor.value} as {model_name!r} on http://{host}:{port}/v1", err=True)
    serve(app, settings, log_level=log_level)


app = typer.Typer(add_completion=False, help="The tokensched OpenAI-compatible server.")


@app.callback()
def _group() -> None:
    """Keeps ``serve`` a subcommand (typer would otherwise fold a lone command into the app)."""


app.command("serve")(serve_command)

if __name__ == "__main__":
    app()
