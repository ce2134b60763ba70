"""``tokensched cluster`` starts replicas behind the real gateway and leaves nothing running when stopped."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tokensched.cluster import Cluster, ClusterError, ClusterSpec

from .conftest import requires_smg

pytestmark = requires_smg
CHAT = {"model": "tokensched", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:  # a zombie is dead, just not yet reaped
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], within_s: float = 30.0) -> list[int]:
    deadline = time.monotonic() + within_s
    while (left := [p for p in pids if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


class Launched:
    """``tokensched cluster`` as a child process; its stdout read on a thread so a read never blocks a test."""

    def __init__(self, *args: str) -> None:
        command = [sys.executable, "-c", "from tokensched.cli import main; main()", "cluster", "--port", "0", *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.gateway_url = ""
        self.replica_pids: list[int] = []
        self.gateway_pid = 0

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_ready(self, replicas: int, within_s: float = 60.0) -> None:
        deadline = time.monotonic() + within_s
        while len(self.replica_pids) < replicas:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line.startswith("gateway:"):
                self.gateway_url = line.split()[1].removesuffix("/v1")
            elif line.startswith("replica:"):
                self.replica_pids.append(int(line.split("pid")[1]))
        self.gateway_pid = next(p for p in _children(self.process.pid) if p not in self.replica_pids)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
        return [int(p) for p in f.read().split()]


@pytest.mark.parametrize(("sig", "replicas"), [(signal.SIGTERM, 2), (signal.SIGINT, 1)])
def test_the_command_serves_through_the_gateway_and_a_signal_stops_every_process(
    sig: signal.Signals, replicas: int
) -> None:
    launched = Launched("--replicas", str(replicas), "--serve-args", "--realtime 0")
    try:
        launched.wait_ready(replicas)
        response = httpx.post(launched.gateway_url + "/v1/chat/completions", json=CHAT, timeout=30)
        assert response.status_code == 200 and response.json()["choices"][0]["finish_reason"] == "length"
        pids = [*launched.replica_pids, launched.gateway_pid]
        assert all(_alive(p) for p in pids)
        launched.process.send_signal(sig)
        assert launched.process.wait(30) == 0
        assert _wait_gone(pids, within_s=5) == []
        assert "stopped" in (launched.process.stderr.read() if launched.process.stderr else "")
    finally:
        if launched.process.poll() is None:
            launched.kill()


def test_killing_the_launcher_outright_still_stops_its_replicas_and_gateway() -> None:
    launched = Launched("--replicas", "1", "--serve-args", "--realtime 0")
    try:
        launched.wait_ready(1)
        pids = [*launched.replica_pids, launched.gateway_pid]
        launched.kill()  # SIGKILL: no cleanup runs in the launcher; the kernel tells the children (PDEATHSIG)
        assert _wait_gone(pids) == []
    finally:
        if launched.process.poll() is None:
            launched.kill()


def test_a_replica_that_cannot_start_is_reported_with_its_output_and_nothing_is_left_running() -> None:
    cluster = Cluster(ClusterSpec(replicas=2, serve_args=("--sim-model", "no-such-model"), startup_timeout_s=60))
    with pytest.raises(ClusterError, match=r"(?s)replica-0 .* exited with .*no-such-model"):
        cluster.start()
    assert cluster.gateway is None
    assert _wait_gone(cluster.pids(), within_s=1) == []
