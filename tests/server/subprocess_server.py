"""``tokensched serve`` in a child process on a free loopback port, with its log in a file.

For what an in-process server cannot show: signals, exit status, a lowered
file-descriptor limit, and every line the process logs.
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@attrs.frozen
class Child:
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def log_lines(self) -> list[str]:
        return self.log.read_text(errors="replace").splitlines()


def _limit_fds(limit: int) -> Callable[[], None]:
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

    return apply


@contextmanager
def child_server(
    *args: str, fd_limit: int | None = None, env: dict[str, str] | None = None, start_timeout: float = 60.0
) -> Iterator[Child]:
    """Start ``serve --port <free> *args``; wait until /health answers; kill it on exit if it still runs."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "tokensched.server.cli", "serve", "--port", str(port), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                preexec_fn=_limit_fds(fd_limit) if fd_limit is not None else None,
            )
        child = Child(process, f"http://127.0.0.1:{port}", port, log)
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                if process.poll() is not None:
                    raise AssertionError(f"the server exited with {process.returncode}:\n{log.read_text()}")
                try:
                    if httpx.get(child.url + "/health", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"the server did not start:\n{log.read_text()}")
                time.sleep(0.1)
            yield child
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait(10)
