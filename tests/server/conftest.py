"""Live servers on an ephemeral loopback port, over the simulated GPU or the tiny torch model.

Every request these tests send goes to 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import httpx
import pytest

from tokensched.server import EngineRunner, ServerSettings, Tokenizer, create_app
from tokensched.server.launch import BackgroundServer, sim_backend

MODEL = "tokensched"
TEST_TIMEOUT_S = 120  # a hung server fails its test instead of the whole run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == Path(__file__).parent and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


@attrs.frozen
class Live:
    url: str
    runner: EngineRunner
    tokenizer: Tokenizer

    @property
    def v1(self) -> str:
        return self.url + "/v1"


@contextmanager
def live_server(runner: EngineRunner, tokenizer: Tokenizer, **settings: object) -> Iterator[Live]:
    """Serve ``runner`` on 127.0.0.1:<free port>; on exit, check the engine thread never crashed."""
    app = create_app(runner, tokenizer, ServerSettings.model_validate({"model_name": MODEL} | settings))
    with BackgroundServer(app, host="127.0.0.1", port=0) as server:
        yield Live(server.url, runner, tokenizer)
        assert runner.error is None, f"the engine thread crashed: {runner.error!r}"
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
    assert not runner.running


def sim(**config: object) -> tuple[EngineRunner, Tokenizer]:
    """The simulated 8B model on one H100, paced to wall time, invariants checked after every step.

    ``config`` sets SchedulerConfig fields (``max_waiting=1``...).
    """
    return sim_backend(num_kv_blocks=1024, realtime=1.0, check_invariants=True, config=config)


@pytest.fixture
def sim_server() -> Iterator[Live]:
    with live_server(*sim()) as live:
        yield live


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` passes; returns its last value.

    A passing wait returns as soon as the state is there; the bound only matters
    when it never comes, so it is generous (a loaded 2-core CI runner can stall
    a thread for seconds) and still well inside ``TEST_TIMEOUT_S``.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def parse_samples(text: str) -> dict[str, float]:
    """Prometheus text as name{labels} -> value, leaving out the labels every sample carries (model, engine)."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            name, _, labels = series.partition("{")
            kept = [pair for pair in labels.rstrip("}").split(",") if pair and not pair.startswith(COMMON_LABELS)]
            samples[name + ("{" + ",".join(kept) + "}" if kept else "")] = float(value)
    return samples


COMMON_LABELS = ("model_name=", "engine=")


def scrape(live: Live) -> dict[str, float]:
    """``/metrics`` as name{labels} -> value (without the model and engine labels)."""
    return parse_samples(httpx.get(live.url + "/metrics", timeout=10).text)


def idle_and_empty(live: Live) -> bool:
    """No request left and every KV block back in the pool."""
    stats = live.runner.stats
    return (
        stats.num_running == 0
        and stats.num_waiting == 0
        and stats.num_steps_in_flight == 0
        and stats.num_free_blocks == stats.num_total_blocks
    )
