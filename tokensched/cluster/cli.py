"""``tokensched cluster``: replicas behind the gateway, in the foreground until SIGINT or SIGTERM.

Register it in the main CLI with ``app.command("cluster")(cluster_command)``.
"""

from __future__ import annotations

import shlex
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Annotated

import typer

from tokensched.cluster.spec import RouterPolicy


class _Stop(Exception):
    """Raised from a signal handler to leave the wait loop and stop the cluster."""


def cluster_command(
    replicas: Annotated[int, typer.Option(min=1, max=64, help="tokensched serve processes")] = 2,
    router: Annotated[RouterPolicy, typer.Option(help="the gateway's routing policy")] = RouterPolicy.CACHE_AWARE,
    host: Annotated[str, typer.Option(help="every process binds here")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="the gateway's port (0: a free one)")] = 30000,
    prometheus_port: Annotated[
        int, typer.Option(min=0, max=65535, help="the gateway's Prometheus port (0: a free one)")
    ] = 0,
    model_name: Annotated[str, typer.Option(help="the model name every replica serves")] = "tokensched",
    serve_args: Annotated[
        str, typer.Option(help="extra arguments for every replica, e.g. '--realtime 0 --sim-gpu h200'")
    ] = "",
    smg_args: Annotated[str, typer.Option(help="extra arguments for smg launch, e.g. '--cache-threshold 0.5'")] = "",
    log_dir: Annotated[Path | None, typer.Option(help="write each process's output here")] = None,
    startup_timeout: Annotated[float, typer.Option(help="seconds to wait for everything to be healthy")] = 60.0,
) -> None:
    """Serve N simulated replicas behind SGLang Model Gateway (smg) until interrupted."""
    from pydantic import ValidationError

    from tokensched.cluster.launcher import Cluster, ClusterError
    from tokensched.cluster.spec import ClusterSpec

    try:
        spec = ClusterSpec(
            replicas=replicas,
            router=router,
            host=host,
            gateway_port=port,
            prometheus_port=prometheus_port,
            model_name=model_name,
            serve_args=tuple(shlex.split(serve_args)),
            smg_args=tuple(shlex.split(smg_args)),
            startup_timeout_s=startup_timeout,
        )
    except ValidationError as exc:
        raise typer.BadParameter(str(exc)) from exc

    def on_signal(signum: int, frame: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    cluster = Cluster(spec, log_dir=log_dir)
    code = 0
    try:
        cluster.start()
        typer.echo(f"gateway: {cluster.url}/v1  (policy {spec.router.value}, metrics {cluster.metrics_url})")
        for member in cluster.replicas:
            typer.echo(f"replica: {member.url}  pid {member.pid}")
        typer.echo(f"gateway pid {cluster.gateway.pid if cluster.gateway else '-'}; Ctrl-C stops everything", err=True)
        while True:
            dead = cluster.dead()
            if cluster.gateway in dead:
                typer.echo(f"the gateway exited with {cluster.gateway.process.returncode}; stopping", err=True)
                code = 1
                break
            for member in dead:
                typer.echo(f"{member.name} exited with {member.process.returncode}", err=True)
            time.sleep(0.5)
    except _Stop as why:
        typer.echo(f"{why}: stopping the gateway and {len(cluster.replicas)} replicas", err=True)
    except ClusterError as exc:
        typer.echo(f"error: {exc}", err=True)
        code = 1
    finally:
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean stop short
        cluster.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    typer.echo("stopped", err=True)
    raise typer.Exit(code)
