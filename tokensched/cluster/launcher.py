"""Start N ``tokensched serve`` replicas and one ``smg launch`` gateway; stop them all.

Order matters both ways. At start the replicas come first and must answer
``/health`` before the gateway is launched, so the gateway never registers a
worker that is still binding its port; then we wait until the gateway's
``/workers`` lists every replica healthy. At stop the gateway goes first (no
new requests reach a replica that is going away), then the replicas; each
gets SIGTERM, ``stop_timeout_s`` to exit, then SIGKILL.

No orphans: every child runs in its own process group (a terminal's Ctrl-C
reaches only the launcher, which then stops them in order) and, on Linux,
asks the kernel to SIGTERM it if the launcher dies without cleaning up
(``PR_SET_PDEATHSIG``), so even ``kill -9`` of the launcher leaves nothing
running.

>>> with Cluster(ClusterSpec(replicas=2, router="cache_aware")) as cluster:   # doctest: +SKIP
...     httpx.post(cluster.url + "/v1/chat/completions", json=...)
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

import attrs
import httpx

from tokensched.cluster.spec import ClusterSpec
from tokensched.errors import TokenschedError

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_POLL_S = 0.1


class ClusterError(TokenschedError):
    """A replica or the gateway could not be started, or died."""


@attrs.define
class Member:
    """One child process: a replica or the gateway."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (another process could take it before we bind; rare on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def find_smg(explicit: str | None = None) -> str | None:
    """The ``smg`` command: ``explicit``, else beside this Python (a venv's bin), else on PATH."""
    if explicit is not None:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    beside = Path(sys.executable).with_name("smg")
    if beside.exists():
        return str(beside)
    return shutil.which("smg")


def _die_with_parent() -> None:
    """Runs in the child before exec: its own process group, and SIGTERM when the launcher dies."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class Cluster:
    """A running local cluster; a context manager. ``url`` is the gateway's base URL."""

    def __init__(self, spec: ClusterSpec, *, log_dir: Path | None = None) -> None:
        self.spec = spec
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir if log_dir is not None else Path(tempfile.mkdtemp(prefix="tokensched-cluster-"))
        """Each process's output, ``<name>.log``; a folder of our own is removed by a clean ``stop``."""
        self.replicas: list[Member] = []
        self.gateway: Member | None = None
        self.url = ""
        self.metrics_url = ""

    # --- start ------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start everything and wait until the gateway routes to every replica; on failure, stop what started."""
        smg = find_smg(self.spec.smg_binary)
        if smg is None:
            raise ClusterError("the smg command is not installed; pip install 'tokensched[cluster]' (smg==1.13.0)")
        try:
            self._start_replicas()
            self._start_gateway(smg)
        except BaseException:
            self.stop()
            raise

    def _start_replicas(self) -> None:
        spec = self.spec
        ports = list(spec.replica_ports) or [free_port(spec.host) for _ in range(spec.replicas)]
        for i, port in enumerate(ports):
            command = [
                sys.executable,
                "-c",
                "from tokensched.cli import main; main()",
                "serve",
                "--host",
                spec.host,
                "--port",
                str(port),
                "--model-name",
                spec.model_name,
                "--seed",
                str(i),
                *spec.serve_args,
            ]
            self.replicas.append(self._spawn(f"replica-{i}", f"http://{spec.host}:{port}", command))
        deadline = time.monotonic() + spec.startup_timeout_s
        for member in self.replicas:
            self._wait(member, deadline, lambda m: _get_ok(m.url + "/health"))

    def _start_gateway(self, smg: str) -> None:
        spec = self.spec
        port = spec.gateway_port or free_port(spec.host)
        prometheus = spec.prometheus_port or free_port(spec.host)
        command = [
            smg,
            "launch",
            "--host",
            spec.host,
            "--port",
            str(port),
            "--prometheus-host",
            spec.host,
            "--prometheus-port",
            str(prometheus),
            "--policy",
            spec.router.value,
            "--worker-urls",
            *[m.url for m in self.replicas],
            "--health-check-interval-secs",
            str(spec.health_check_interval_s),
            "--load-monitor-interval",
            str(spec.load_monitor_interval_s),
            "--shutdown-grace-period-secs",
            str(max(1, int(spec.stop_timeout_s) - 1)),
            "--log-level",
            "warn",
            *(["--routing-key-headers", spec.routing_key_header] if spec.routing_key_header else []),
            *spec.smg_args,
        ]
        self.gateway = self._spawn("gateway", f"http://{spec.host}:{port}", command)
        self.url = self.gateway.url
        self.metrics_url = f"http://{spec.host}:{prometheus}/metrics"
        deadline = time.monotonic() + spec.startup_timeout_s
        self._wait(self.gateway, deadline, lambda m: self.healthy_workers() == {r.url for r in self.replicas})

    def _spawn(self, name: str, url: str, command: Sequence[str]) -> Member:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as out:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        return Member(name, url, process, log_path)

    def _wait(self, member: Member, deadline: float, ready: Callable[[Member], bool]) -> None:
        while True:
            if not member.alive:
                raise ClusterError(
                    f"{member.name} ({member.url}) exited with {member.process.returncode} while starting\n"
                    f"{member.log_tail()}"
                )
            if ready(member):
                return
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"{member.name} ({member.url}) was not ready within {self.spec.startup_timeout_s:.0f} s\n"
                    f"{member.log_tail()}"
                )
            time.sleep(_POLL_S)

    # --- while running ----------------------------------------------------------------------------

    def healthy_workers(self) -> set[str]:
        """The worker URLs the gateway lists as healthy and ready (empty if it does not answer)."""
        if self.gateway is None:
            return set()
        try:
            response = httpx.get(self.url + "/workers", timeout=2.0)
            workers = response.json().get("workers", []) if response.status_code == 200 else []
        except (httpx.HTTPError, ValueError):
            return set()
        return {w["url"] for w in workers if w.get("is_healthy") and w.get("status", "ready") == "ready"}

    @property
    def members(self) -> list[Member]:
        return [*self.replicas, *([self.gateway] if self.gateway is not None else [])]

    def pids(self) -> list[int]:
        return [m.pid for m in self.members]

    def dead(self) -> list[Member]:
        """Members that exited on their own (a crash, or someone killed them)."""
        return [m for m in self.members if not m.alive]

    def kill_replica(self, index: int, sig: signal.Signals = signal.SIGKILL) -> Member:
        """Kill one replica (a fault to test against); the gateway notices through its health checks."""
        member = self.replicas[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(member.pid, sig)
        member.process.wait(self.spec.stop_timeout_s)
        return member

    # --- stop -------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Gateway first, then every replica: SIGTERM, wait, SIGKILL. Idempotent."""
        if self.gateway is not None:
            _terminate([self.gateway], self.spec.stop_timeout_s)
        _terminate(self.replicas, self.spec.stop_timeout_s)
        if self._own_log_dir:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _terminate(members: Sequence[Member], timeout: float) -> None:
    """SIGTERM each member's process group, wait up to ``timeout`` for all, SIGKILL the stragglers."""
    for member in members:
        if member.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(member.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for member in members:
        with contextlib.suppress(subprocess.TimeoutExpired):
            member.process.wait(max(0.0, deadline - time.monotonic()))
    for member in members:
        # the group too: a child the member forked would otherwise outlive it
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(member.pid, signal.SIGKILL)
        member.process.wait()


def _get_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
