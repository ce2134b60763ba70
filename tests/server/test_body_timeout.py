"""A client that sends a head and then trickles its body gets 408 at the body timeout, not a connection for good.

Raw sockets, like the slow client itself: the body comes one byte per tick,
each tick well inside the timeout, so only a deadline on the whole body (not
on the gap between chunks) can end it.
"""

from __future__ import annotations

import http.client
import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.server.conftest import MODEL, idle_and_empty, live_server, scrape, sim, wait_for
from tests.server.test_edge import SOCKET_TIMEOUT_S, completion, connected, head, read_all
from tokensched.server import guard

BODY_TIMEOUT_S = 1.0
TICK_S = 0.2  # one body byte this often: a fifth of the timeout
GENEROUS_TIMEOUT_S = 3.0  # for bodies that do arrive: five times what sending them takes, for loaded machines
TRICKLE_FOR_S = 6.0  # long past the timeout; the server that never answers fails the test after this


def trickle(sock: socket.socket, seconds: float) -> bytes:
    """Send a byte per tick until the server answers or closes, or ``seconds`` pass; what it answered."""
    sock.settimeout(TICK_S)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                sock.sendall(b" ")
            except OSError:  # the server closed: its answer, if any, is waiting to be read
                break
            try:
                return sock.recv(65536)
            except TimeoutError:
                continue
        return b""
    finally:
        sock.settimeout(SOCKET_TIMEOUT_S)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextmanager
def shed_lines() -> Iterator[list[str]]:
    handler = Records()
    logger = logging.getLogger("tokensched.server")
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def test_a_trickled_body_gets_408_at_the_body_timeout_and_the_server_keeps_serving() -> None:
    with shed_lines() as lines, live_server(*sim(), body_timeout_s=BODY_TIMEOUT_S) as live:
        with connected(live) as first, connected(live) as second:
            first.sendall(head("/v1/completions", 10_000) + b'{"model": "' + MODEL.encode())
            second.sendall(head("/v1/chat/completions", 10_000) + b"{")
            started = time.monotonic()
            answer = trickle(first, TRICKLE_FOR_S)
            elapsed = time.monotonic() - started
            answer += read_all(first)
            assert answer.startswith(b"HTTP/1.1 408 "), answer
            assert b"request_timeout" in answer
            assert BODY_TIMEOUT_S * 0.9 <= elapsed < TRICKLE_FOR_S  # at the deadline, not at the first byte
            assert read_all(second).startswith(b"HTTP/1.1 408 ")  # the silent one too
        assert completion(live).status_code == 200
        assert scrape(live)['tokensched:shed_total{kind="body_timeout"}'] == 2
        assert wait_for(lambda: idle_and_empty(live))  # neither half-read request reached the engine
        assert live.runner.stats.num_finished + live.runner.stats.num_aborted == 1
    # shed in one interval: one line for both, written at the latest when the server stops
    timeouts = [line for line in lines if "for not sending their body in time" in line]
    assert timeouts == [timeouts[0]]
    assert "2 requests answered 408 for not sending their body in time" in timeouts[0]


def test_a_body_sent_slowly_but_whole_within_the_timeout_is_served() -> None:
    body = b'{"model": "' + MODEL.encode() + b'", "prompt": "hi", "max_tokens": 2}'
    third = len(body) // 3 + 1
    with live_server(*sim(), body_timeout_s=GENEROUS_TIMEOUT_S) as live:
        conn = http.client.HTTPConnection("127.0.0.1", int(live.url.rsplit(":", 1)[1]), timeout=SOCKET_TIMEOUT_S)
        try:
            for _ in range(2):  # twice on one keep-alive connection: the second request's clock starts afresh
                conn.putrequest("POST", "/v1/completions")
                conn.putheader("Content-Type", "application/json")
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                for i in range(0, len(body), third):  # the whole body in 0.6 s, in three pieces
                    time.sleep(TICK_S)
                    conn.send(body[i : i + third])
                response = conn.getresponse()
                assert response.status == 200, response.read()
                response.read()
                time.sleep(GENEROUS_TIMEOUT_S - 1.0)  # the first body's deadline passes while the next one is sent
        finally:
            conn.close()
        assert scrape(live).get('tokensched:shed_total{kind="body_timeout"}', 0.0) == 0


def test_a_client_still_sending_when_answered_408_reads_the_408_not_a_reset() -> None:
    """The race behind a flaky run: bytes reaching a closed socket (or left unread in it) make the kernel
    reset the connection, and the reset discards the 408 before the client reads it. Here the client sends
    a byte every few milliseconds through the timeout and reads only afterwards, so an unlingering close
    resets it every time."""
    with live_server(*sim(), body_timeout_s=BODY_TIMEOUT_S) as live, connected(live) as sock:
        sock.sendall(head("/v1/completions", 10_000) + b"{")
        deadline = time.monotonic() + BODY_TIMEOUT_S + 0.5
        while time.monotonic() < deadline:
            sock.sendall(b" ")  # the server only half-closes: its read side still takes these
            time.sleep(0.005)
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request_timeout" in answer
        assert completion(live).status_code == 200


def test_a_client_that_never_closes_after_the_408_is_closed_at_the_linger_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The lingering close is bounded: a client that reads the 408 and then neither closes nor stops sending
    finds the connection gone (its bytes get a reset) once LINGER_S has passed, and not before."""
    monkeypatch.setattr(guard, "LINGER_S", 0.5)
    with live_server(*sim(), body_timeout_s=BODY_TIMEOUT_S) as live, connected(live) as sock:
        sock.sendall(head("/v1/completions", 10_000) + b"{")
        assert read_all(sock).startswith(b"HTTP/1.1 408 ")  # the answer, then the server's half-close
        sock.sendall(b" ")  # still lingering: taken and dropped
        time.sleep(1.0)  # past the bound
        with pytest.raises(OSError):  # the first byte draws the reset, the next fails on it
            for _ in range(20):
                sock.sendall(b" ")
                time.sleep(0.05)
        assert completion(live).status_code == 200
