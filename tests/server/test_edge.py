"""The connection edge, seen by raw sockets: header timeouts, the connection cap, 413s that clients can read.

Each test talks bytes to an in-process server on 127.0.0.1, the way a broken
or hostile client would, then checks that a well-behaved client is still served.
"""

from __future__ import annotations

import json
import logging
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest

from tests.server.conftest import MODEL, Live, idle_and_empty, live_server, scrape, sim, wait_for
from tokensched.server import guard

SOCKET_TIMEOUT_S = 10.0


@contextmanager
def connected(live: Live) -> Iterator[socket.socket]:
    port = int(live.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT_S) as sock:
        yield sock


def head(path: str, body_length: int, *, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {body_length}\r\n{extra}\r\n"
    ).encode()


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (a socket timeout fails the test)."""
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def completion(live: Live, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "prompt": "hello", "max_tokens": 2} | extra
    return httpx.post(live.v1 + "/completions", json=body, timeout=30)


def test_a_connection_that_sends_no_whole_head_in_time_is_closed() -> None:
    with live_server(*sim(), header_timeout_s=0.5) as live, connected(live) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127")
        assert read_all(sock) == b""  # closed by the server, no answer to half a head
        assert completion(live).status_code == 200
        assert scrape(live)['tokensched:shed_total{kind="header_timeout"}'] == 1


def test_a_silent_connection_is_closed_after_the_header_timeout() -> None:
    with live_server(*sim(), header_timeout_s=0.5) as live, connected(live) as sock:
        assert read_all(sock) == b""


def test_past_the_cap_the_oldest_idle_connection_makes_room() -> None:
    with live_server(*sim(), max_connections=4) as live, ExitStack() as stack:
        idle = [stack.enter_context(connected(live)) for _ in range(4)]
        with httpx.Client(timeout=10) as client:  # one connection for both requests
            assert client.get(live.url + "/health").status_code == 200
            response = client.post(live.v1 + "/completions", json={"model": MODEL, "prompt": "hi", "max_tokens": 2})
        assert response.status_code == 200
        assert idle[0].recv(1) == b""  # the oldest idle one was closed to admit the client
        assert scrape(live)['tokensched:shed_total{kind="idle_connection_evicted"}'] >= 1


def make_busy(live: Live, stack: ExitStack, count: int) -> list[socket.socket]:
    """``count`` connections inside a request (a whole head, no body yet), so the cap cannot evict them."""
    busy_sockets = []
    for _ in range(count):
        busy = stack.enter_context(connected(live))
        busy_sockets.append(busy)
        busy.sendall(head("/v1/completions", 50, extra="Expect: 100-continue\r\n"))
        assert busy.recv(64).startswith(b"HTTP/1.1 100 ")  # the server has read the head and waits for the body
    return busy_sockets


def test_past_the_cap_with_every_connection_busy_a_new_one_gets_503() -> None:
    with live_server(*sim(), max_connections=2) as live, ExitStack() as stack:
        busy_sockets = make_busy(live, stack, 2)
        with connected(live) as extra:
            answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"too many open connections" in answer
        for sock in busy_sockets:
            sock.close()  # make room for the scrape
        assert wait_for(lambda: scrape(live).get('tokensched:shed_total{kind="connection_refused_503"}') == 1)


def test_a_refused_client_that_sent_its_request_reads_the_503_not_a_reset() -> None:
    """Refused while its request is on the way (a megabyte here, more than the socket buffers hold): a close
    on those bytes would reset the connection and discard the 503, so the client could not tell "overloaded,
    retry" from a crash. The refusal lingers instead: the bytes are taken and dropped, then the 503 is read."""
    with live_server(*sim(), max_connections=2) as live, ExitStack() as stack:
        busy_sockets = make_busy(live, stack, 2)
        with connected(live) as extra:
            extra.sendall(head("/v1/completions", 1 << 20) + b" " * (1 << 20))
            answer = read_all(extra)
        assert answer.startswith(b"HTTP/1.1 503 "), answer
        assert b"too many open connections" in answer
        for sock in busy_sockets:
            sock.close()
        assert wait_for(lambda: completion(live).status_code == 200)


def test_refused_connections_linger_only_up_to_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """At most REFUSED_LINGERING_MAX refused connections linger, each for at most LINGER_S: past the bound a
    refused connection is closed at once (its bytes draw a reset), and a lingering one is closed at LINGER_S."""
    monkeypatch.setattr(guard, "REFUSED_LINGERING_MAX", 1)
    monkeypatch.setattr(guard, "LINGER_S", 1.5)
    with live_server(*sim(), max_connections=2) as live, ExitStack() as stack:
        make_busy(live, stack, 2)
        lingering = stack.enter_context(connected(live))
        assert read_all(lingering).startswith(b"HTTP/1.1 503 ")  # the answer, then the server's half-close
        closed = stack.enter_context(connected(live))
        assert read_all(closed).startswith(b"HTTP/1.1 503 ")
        lingering.sendall(b" ")  # taken and dropped
        with pytest.raises(OSError):  # past the bound: the first byte draws the reset, the next fails on it
            keep_sending(closed, 1.0)
        keep_sending(lingering, 0.5)  # still lingering (well inside LINGER_S of its refusal)
        with pytest.raises(OSError):
            keep_sending(lingering, 3.0)


def keep_sending(sock: socket.socket, seconds: float) -> None:
    """A byte every 50 ms for ``seconds`` (an OSError once the server has reset the connection)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.sendall(b" ")
        time.sleep(0.05)


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def uvicorn_warnings() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors uvicorn logs (its loggers do not propagate to pytest's)."""
    handler = Records()
    logger = logging.getLogger("uvicorn.error")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)


def test_a_client_that_drops_mid_upload_logs_nothing_and_leaves_the_server_serving() -> None:
    with live_server(*sim()) as live, uvicorn_warnings() as records:
        for _ in range(20):
            with connected(live) as sock:
                sock.sendall(head("/v1/completions", 100) + b"{")
        assert completion(live).status_code == 200
        assert wait_for(lambda: idle_and_empty(live))
        assert [r.getMessage() for r in records] == []


def test_urllib_reads_the_413_for_a_body_it_sends_whole() -> None:
    with live_server(*sim(), max_body_bytes=1 << 20) as live:
        body = json.dumps({"model": MODEL, "prompt": "x" * (8 << 20)}).encode()
        request = urllib.request.Request(
            live.v1 + "/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            urllib.request.urlopen(request, timeout=30)
        except urllib.error.HTTPError as exc:
            assert exc.code == 413
            assert json.loads(exc.read())["error"]["code"] == "request_too_large"
        else:
            raise AssertionError("an 8 MB body was accepted under a 1 MiB limit")
        assert completion(live).status_code == 200


def test_a_body_past_the_discard_cap_is_refused_without_being_read() -> None:
    with live_server(*sim(), max_body_bytes=1 << 20, max_discard_bytes=2 << 20) as live, connected(live) as sock:
        sock.sendall(head("/v1/completions", 1 << 30))  # declares 1 GiB, sends none of it
        answer = read_all(sock)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"request_too_large" in answer


def test_one_client_past_its_share_of_requests_gets_429_with_retry_after() -> None:
    with live_server(*sim(), max_requests_per_client=2) as live, ExitStack() as stack:
        streams = [
            stack.enter_context(
                httpx.stream(
                    "POST",
                    live.v1 + "/completions",
                    json={"model": MODEL, "prompt": "hi", "max_tokens": 5000, "stream": True, "ignore_eos": True},
                    timeout=30,
                )
            )
            for _ in range(2)
        ]
        assert all(s.status_code == 200 for s in streams)
        refused = completion(live)
        assert refused.status_code == 429
        assert refused.headers["Retry-After"] == "1"
        assert refused.json()["error"]["code"] == "too_many_requests"
        assert scrape(live)['tokensched:request_rejected_total{reason="client_cap"}'] == 1
    # the two streams closed: their slots are free again


def test_head_health_is_answered() -> None:
    with live_server(*sim()) as live:
        response = httpx.head(live.url + "/health", timeout=10)
        assert response.status_code == 200
        assert response.content == b""


def test_more_prompts_than_the_queue_can_ever_hold_is_a_400_not_a_429() -> None:
    with live_server(*sim(max_waiting=4)) as live:
        response = completion(live, prompt=["a", "b", "c", "d", "e"])
        assert response.status_code == 400, response.text
        assert "exceed the queue's capacity of 4" in response.json()["error"]["message"]
        assert "Retry-After" not in response.headers
