"""A client that goes away aborts its request and gives its KV blocks back.

Every check here reads state another thread publishes (the engine thread's
stats snapshot, the event loop's counters), so each one waits for the state
it expects, bounded, instead of sampling once: on a loaded machine a single
sample can land before the publishing thread has run. What each wait asks
for is exact (one running request, one abort, every block free).
"""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import MODEL, Live, idle_and_empty, scrape, wait_for

LONG = 4000  # tokens: about half a minute of simulated decoding, far longer than any test waits


def aborted(live: Live) -> float:
    return scrape(live).get('tokensched:request_success_total{finished_reason="abort"}', 0.0)


def running_one_holding_blocks(live: Live) -> bool:
    stats = live.runner.stats
    return stats.num_running == 1 and stats.num_free_blocks < stats.num_total_blocks


def aborted_in_engine(live: Live, count: int) -> bool:
    """Exactly ``count`` requests aborted and retired by the scheduler, and nothing else finished."""
    stats = live.runner.stats
    return stats.num_aborted == count and stats.num_finished == count


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_a_mid_stream_disconnect_frees_the_requests_blocks(sim_server: Live, route: str) -> None:
    body: dict[str, object] = {"model": MODEL, "max_tokens": LONG, "stream": True}
    body |= {"prompt": "x" * 100} if route == "completions" else {"messages": [{"role": "user", "content": "x" * 100}]}
    with (
        httpx.Client(timeout=30.0) as http,
        http.stream("POST", f"{sim_server.v1}/{route}", json=body) as response,
    ):
        assert response.status_code == 200
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events >= 5:
                break
        assert wait_for(lambda: running_one_holding_blocks(sim_server))
    # leaving the block closed the connection mid-stream
    assert wait_for(lambda: idle_and_empty(sim_server))
    assert wait_for(lambda: aborted_in_engine(sim_server, 1))
    assert wait_for(lambda: aborted(sim_server) == 1)


def test_a_client_that_gives_up_on_a_whole_answer_frees_its_blocks(sim_server: Live) -> None:
    body = {"model": MODEL, "prompt": "y" * 64, "max_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sim_server.v1 + "/completions", json=body, timeout=httpx.Timeout(10.0, read=0.5))
    assert wait_for(lambda: idle_and_empty(sim_server))
    assert wait_for(lambda: aborted_in_engine(sim_server, 1))
    assert wait_for(lambda: aborted(sim_server) == 1)


def test_the_server_keeps_serving_after_clients_walk_away(sim_server: Live) -> None:
    for _ in range(3):
        with httpx.stream(
            "POST",
            sim_server.v1 + "/completions",
            json={"model": MODEL, "prompt": "z", "max_tokens": LONG, "stream": True},
            timeout=30.0,
        ) as response:
            next(response.iter_lines())
    answer = httpx.post(sim_server.v1 + "/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 3})
    assert answer.status_code == 200
    assert len(answer.json()["choices"][0]["text"]) == 3
    assert wait_for(lambda: idle_and_empty(sim_server))
    assert wait_for(lambda: aborted(sim_server) == 3)
    assert wait_for(lambda: sim_server.runner.stats.num_aborted == 3)
