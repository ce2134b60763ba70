"""A fault campaign through Python's urllib (which sends a whole body before reading): no 5xx, every error readable."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from tests.server.conftest import MODEL, Live, idle_and_empty, live_server, sim, wait_for

LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[Live]:
    with live_server(*sim(max_model_len=512, max_waiting=8), max_body_bytes=LIMIT) as live:
        yield live


def call(live: Live, method: str, path: str, data: bytes | None, content_type: str) -> tuple[int, bytes]:
    request = urllib.request.Request(live.url + path, data=data, method=method, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def body(**fields: object) -> bytes:
    return json.dumps({"model": MODEL} | fields).encode()


CASES = [
    ("POST", "/v1/completions", b"{", "application/json", 400),
    ("POST", "/v1/completions", b"", "application/json", 400),
    ("POST", "/v1/completions", b"\xff\xfe", "application/json", 400),
    ("POST", "/v1/completions", b"[]", "application/json", 400),
    ("POST", "/v1/completions", body(prompt="x" * 600), "application/json", 400),
    ("POST", "/v1/completions", body(prompt="x", max_tokens=0), "application/json", 400),
    ("POST", "/v1/completions", body(prompt=[1, 2, -3]), "application/json", 400),
    ("POST", "/v1/completions", body(prompt=["a"] * 9), "application/json", 400),
    ("POST", "/v1/completions", body(prompt="x", model="other"), "application/json", 404),
    ("POST", "/v1/completions", body(prompt="x" * (2 * LIMIT)), "application/json", 413),
    ("POST", "/v1/completions", body(prompt="x" * (100 * LIMIT)), "application/json", 413),
    ("POST", "/v1/chat/completions", body(messages="hi"), "application/json", 400),
    ("POST", "/v1/chat/completions", body(messages=[{"role": "robot", "content": "hi"}]), "text/plain", 400),
    ("POST", "/v1/chat/completions", body(messages=[{"role": "user", "content": "hi"}], n=2), "application/json", 400),
    ("GET", "/v1/completions", None, "application/json", 405),
    ("GET", "/v1/nothing", None, "application/json", 404),
    ("HEAD", "/health", None, "application/json", 200),
    ("POST", "/v1/completions", body(prompt="hi", max_tokens=2), "application/json", 200),
]


@pytest.mark.parametrize(("method", "path", "data", "content_type", "status"), CASES)
def test_urllib_reads_a_clear_answer(
    server: Live, method: str, path: str, data: bytes | None, content_type: str, status: int
) -> None:
    code, payload = call(server, method, path, data, content_type)
    assert code == status, payload[:300]
    if status >= 400:
        assert "message" in json.loads(payload)["error"]


def test_after_the_campaign_nothing_is_left_running(server: Live) -> None:
    assert wait_for(lambda: idle_and_empty(server))
