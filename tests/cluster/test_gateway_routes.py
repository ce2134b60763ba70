"""The routes a model gateway polls report the scheduler's real load, in SGLang's field names."""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import httpx
import pytest

from tokensched import RequestOutput, RequestSpec
from tokensched.server import BackgroundServer, ServerSettings, create_app
from tokensched.server.gateway import Loads, RankLoad, loads_of
from tokensched.server.launch import sim_backend
from tokensched.server.runner import EngineRunner

from .conftest import settle


@pytest.fixture
def one_running() -> Iterator[tuple[str, EngineRunner]]:
    """A paced sim replica that runs one request at a time (max_running=1), on a loopback port."""
    runner, tokenizer = sim_backend(num_kv_blocks=512, realtime=1.0, config={"max_running": 1})
    app = create_app(runner, tokenizer, ServerSettings(model_name="m"))
    with BackgroundServer(app) as server:
        yield server.url, runner
        assert runner.error is None


def _loads(url: str) -> Loads:
    return Loads.model_validate(httpx.get(url + "/v1/loads", params={"include": "core,queues"}, timeout=5).json())


def _rank(url: str) -> RankLoad:
    return _loads(url).loads[0]


def test_an_idle_replica_reports_no_load_and_its_whole_pool(one_running: tuple[str, EngineRunner]) -> None:
    url, runner = one_running
    load = _loads(url)
    assert load.dp_rank_count == 1 and len(load.loads) == 1
    rank = load.loads[0]
    assert (rank.num_running_reqs, rank.num_waiting_reqs, rank.num_used_tokens, rank.token_usage) == (0, 0, 0, 0.0)
    assert rank.max_total_num_tokens == runner.stats.num_total_blocks * runner.config.block_size
    assert rank.max_running_requests == 1


def test_running_and_waiting_requests_and_their_kv_show_in_the_load(one_running: tuple[str, EngineRunner]) -> None:
    url, runner = one_running
    sink_calls: list[RequestOutput] = []
    specs = [
        RequestSpec(request_id=f"r{i}", prompt_token_ids=[i + 1] * 300, max_tokens=5000, ignore_eos=True)
        for i in range(3)
    ]
    runner.submit(specs, sink_calls.extend).result(timeout=10)
    rank = cast(RankLoad, settle(lambda: _rank(url), lambda r: cast(RankLoad, r).num_total_reqs == 3))
    assert (rank.num_running_reqs, rank.num_waiting_reqs, rank.num_total_reqs) == (1, 2, 3)
    block = runner.config.block_size
    assert rank.num_used_tokens >= 300 and rank.num_used_tokens % block == 0  # the running request's blocks
    assert rank.token_usage == pytest.approx(rank.num_used_tokens / rank.max_total_num_tokens)
    runner.abort([s.request_id for s in specs])
    idle = cast(RankLoad, settle(lambda: _rank(url), lambda r: cast(RankLoad, r).num_total_reqs == 0))
    assert (idle.num_running_reqs, idle.num_waiting_reqs) == (0, 0)


def test_loads_mirror_the_latest_stats_snapshot_exactly() -> None:
    runner, _ = sim_backend(num_kv_blocks=64, realtime=None)
    runner.scheduler.submit(RequestSpec(request_id="a", prompt_token_ids=list(range(1, 100)), max_tokens=4))
    runner.stats = runner.scheduler.stats()
    rank = loads_of(runner).loads[0]
    stats = runner.stats
    assert rank.num_waiting_reqs == stats.num_waiting == 1
    assert rank.num_used_tokens == (stats.num_total_blocks - stats.num_free_blocks) * runner.config.block_size
    assert rank.cache_hit_rate == stats.prefix_hit_rate


def test_server_and_model_info_name_the_model_and_the_pool(one_running: tuple[str, EngineRunner]) -> None:
    url, runner = one_running
    info = httpx.get(url + "/server_info", timeout=5).json()
    assert info["served_model_name"] == info["model_path"] == "m"
    assert info["max_total_tokens"] == runner.config.num_tokens_capacity
    assert (info["page_size"], info["context_length"]) == (runner.config.block_size, runner.config.max_model_len)
    assert httpx.get(url + "/get_server_info", timeout=5).json() == info
    model = httpx.get(url + "/model_info", timeout=5).json()
    assert model["model_path"] == "m" and model["is_generation"] is True
