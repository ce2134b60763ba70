"""Refusals: malformed 400, oversize 413, queue full 429 with Retry-After; the server survives them all."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.server.conftest import MODEL, Live, idle_and_empty, live_server, scrape, sim, wait_for

LIMIT = 4096


@pytest.fixture(scope="module")
def small_server() -> Iterator[Live]:
    """A 256-token context and a 4 KiB body limit."""
    with live_server(*sim(max_model_len=256), max_body_bytes=LIMIT) as live:
        yield live


def post(live: Live, route: str, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{live.v1}/{route}", timeout=30.0, **kwargs)  # type: ignore[arg-type]


def chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}]} | extra


@pytest.mark.parametrize(
    ("route", "body", "needle", "param"),
    [
        ("completions", {"model": MODEL}, "prompt: Field required", "prompt"),
        ("completions", {"model": MODEL, "prompt": ""}, "prompt is empty", "prompt"),
        ("completions", {"model": MODEL, "prompt": [65, 300]}, "outside the vocabulary", "prompt"),
        ("completions", {"model": MODEL, "prompt": "x", "n": 3}, "n=3 is not supported", None),
        ("completions", {"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens", "max_tokens"),
        (
            "completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 500},
            "exceeds this model's context",
            "max_tokens",
        ),
        ("completions", {"model": MODEL, "prompt": "x" * 300}, "leaves no room", None),
        ("completions", {"model": MODEL, "prompt": "x", "temperature": "hot"}, "temperature", "temperature"),
        ("completions", {"model": MODEL, "prompt": "x", "stop": ["a"] * 9}, "stop sequences", "stop"),
        ("chat/completions", {"model": MODEL, "messages": []}, "messages", "messages"),
        ("chat/completions", chat("x") | {"messages": [{"role": "robot"}]}, "messages.0.role", "messages.0.role"),
        ("chat/completions", chat("x", tools=[{"type": "function"}]), "tools are not supported", None),
        ("chat/completions", chat("x", stream_options={"include_usage": True}), "stream=true", None),
    ],
)
def test_an_invalid_request_is_a_400_that_names_the_problem(
    small_server: Live, route: str, body: dict[str, object], needle: str, param: str | None
) -> None:
    response = post(small_server, route, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'{"model": "tokensched", "prompt": "x"'])
def test_a_body_that_is_not_a_json_object_is_a_400(small_server: Live, raw: bytes) -> None:
    response = post(small_server, "completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"]


def test_a_declared_oversize_body_is_a_413(small_server: Live) -> None:
    response = post(small_server, "completions", json={"model": MODEL, "prompt": "x" * (2 * LIMIT)})
    assert response.status_code == 413
    assert f"limit of {LIMIT} bytes" in response.json()["error"]["message"]


def test_an_undeclared_oversize_body_is_a_413(small_server: Live) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "tokensched", "prompt": "'
        for _ in range(8):
            yield b"x" * 1024
        yield b'"}'

    response = post(small_server, "completions", content=chunks())  # chunked: no Content-Length
    assert response.status_code == 413


def test_wrong_routes_and_methods_answer_in_openai_shape(small_server: Live) -> None:
    missing = httpx.get(small_server.v1 + "/engines", timeout=10)
    assert missing.status_code == 404
    assert missing.json()["error"]["message"]
    wrong_method = httpx.get(small_server.v1 + "/completions", timeout=10)
    assert wrong_method.status_code == 405


def test_refusals_are_counted_and_the_server_still_answers(small_server: Live) -> None:
    post(small_server, "completions", content=b"{")
    samples = scrape(small_server)
    assert samples['tokensched:request_rejected_total{reason="invalid"}'] >= 1
    answer = post(small_server, "completions", json={"model": MODEL, "prompt": "still here?", "max_tokens": 4})
    assert answer.status_code == 200
    assert len(answer.json()["choices"][0]["text"]) == 4


def test_a_full_queue_is_a_429_with_retry_after_and_clears_when_clients_leave() -> None:
    with live_server(*sim(max_running=1, max_waiting=1), retry_after_s=2) as live, httpx.Client(timeout=30.0) as http:
        body = {"model": MODEL, "prompt": "hold the line", "max_tokens": 4000, "stream": True}
        with http.stream("POST", live.v1 + "/completions", json=body) as running:
            lines = running.iter_lines()  # kept: dropping a half-read iterator closes the connection
            next(lines)  # admitted and streaming
            with http.stream("POST", live.v1 + "/completions", json=body) as waiting:
                assert waiting.status_code == 200
                assert wait_for(lambda: live.runner.stats.num_waiting == 1)
                refused = http.post(live.v1 + "/completions", json=body | {"stream": False})
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "2"
                assert refused.json()["error"]["code"] == "queue_full"
        assert wait_for(lambda: idle_and_empty(live))
        after = http.post(live.v1 + "/completions", json={"model": MODEL, "prompt": "now?", "max_tokens": 2})
        assert after.status_code == 200
        assert scrape(live)['tokensched:request_rejected_total{reason="queue_full"}'] == 1
