"""An idle-connection flood under a 1,024 file-descriptor limit does not take the server away from others."""

from __future__ import annotations

import socket
from contextlib import ExitStack

import httpx

from tests.server.conftest import MODEL
from tests.server.subprocess_server import child_server

FD_LIMIT = 1024
FLOOD = 1100  # more sockets than the server has descriptors
MAX_LOG_LINES = 100


def test_1100_idle_sockets_do_not_stop_a_normal_request_nor_flood_the_log() -> None:
    with child_server("--stats-interval", "0", fd_limit=FD_LIMIT) as child, ExitStack() as stack:
        flood = []
        for _ in range(FLOOD):
            sock = stack.enter_context(socket.socket())
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", child.port))
            flood.append(sock)
        # a normal client, while every flood socket is still open: served within 1 s
        response = httpx.post(
            child.url + "/v1/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2}, timeout=1.0
        )
        assert response.status_code == 200, response.text
        assert httpx.get(child.url + "/health", timeout=1.0).status_code == 200
        lines = child.log_lines()
        assert len(lines) < MAX_LOG_LINES, "\n".join(lines[:20])
        assert not any("Too many open files" in line or "Traceback" in line for line in lines)
        assert any("connections" in line and "limits" in line for line in lines)  # the banner states the cap
