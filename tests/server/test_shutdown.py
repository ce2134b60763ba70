"""SIGTERM drains: live streams end with ``abort`` and ``[DONE]``, exit 0 in time; a second signal is final."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from tests.server.conftest import MODEL
from tests.server.subprocess_server import child_server

DRAIN_S = 2.0
STREAMS = 8
LONG = {"model": MODEL, "prompt": "tell me everything", "max_tokens": 20000, "ignore_eos": True, "stream": True}


class Reader(threading.Thread):
    """One streaming client: every ``data:`` payload it receives, until the server ends the stream."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[str] = []
        self.started_streaming = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("POST", self.url + "/v1/completions", json=LONG, timeout=30) as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line.removeprefix("data: "))
                        self.started_streaming.set()
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.started_streaming.set()


def open_streams(url: str) -> list[Reader]:
    readers = [Reader(url) for _ in range(STREAMS)]
    for reader in readers:
        reader.start()
    for reader in readers:
        assert reader.started_streaming.wait(30)
    return readers


def test_sigterm_ends_every_live_stream_with_abort_and_done_and_exits_0_within_the_drain() -> None:
    with child_server("--drain-timeout", str(DRAIN_S), "--stats-interval", "0") as child:
        readers = open_streams(child.url)
        child.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert child.process.wait(timeout=DRAIN_S + 1.0) == 0
        exited_after = time.monotonic() - signalled
        for reader in readers:
            reader.join(10)
            assert reader.error is None, repr(reader.error)
            assert reader.events[-1] == "[DONE]"
            last = json.loads(reader.events[-2])
            assert last["choices"][0]["finish_reason"] == "abort"
        log = child.log.read_text()
        assert "Traceback" not in log and "ERROR" not in log, log
        assert "aborted 8 request(s)" in log
        assert exited_after >= DRAIN_S  # the streams had the whole drain timeout to finish on their own


def test_sigterm_lets_a_short_request_finish_normally() -> None:
    with child_server("--drain-timeout", "30", "--stats-interval", "0") as child:
        result: list[httpx.Response] = []
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 200, "ignore_eos": True}
        worker = threading.Thread(
            target=lambda: result.append(httpx.post(child.url + "/v1/completions", json=body, timeout=30))
        )
        worker.start()
        deadline = time.monotonic() + 10
        while "running: 1" not in _running(child.url) and time.monotonic() < deadline:
            time.sleep(0.01)
        child.process.send_signal(signal.SIGTERM)
        worker.join(30)
        assert child.process.wait(timeout=30) == 0
        assert result[0].status_code == 200
        assert result[0].json()["choices"][0]["finish_reason"] == "length"


def _running(url: str) -> str:
    try:
        text = httpx.get(url + "/metrics", timeout=1).text
    except httpx.HTTPError:
        return ""
    value = next(
        (line.split()[-1] for line in text.splitlines() if line.startswith("tokensched:num_requests_running")), "0"
    )
    return f"running: {int(float(value))}"


def test_a_second_signal_exits_at_once() -> None:
    with child_server("--drain-timeout", "60", "--stats-interval", "0") as child:
        readers = open_streams(child.url)
        child.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # let the first signal start the drain
        child.process.send_signal(signal.SIGINT)
        assert child.process.wait(timeout=5) == 128 + signal.SIGINT
        assert "second SIGINT" in child.log.read_text()
        for reader in readers:
            reader.join(10)
