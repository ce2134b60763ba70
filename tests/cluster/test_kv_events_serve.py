"""A serving replica's KV events over a real ZMQ socket rebuild its prefix index; a bad endpoint is refused."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from tokensched.cli import app as cli
from tokensched.cluster.sessions import SessionWorkload, run_sessions
from tokensched.kv_events import CachedBlockIndex, KVEventSubscriber, ZmqKVEventPublisher
from tokensched.server import BackgroundServer, ServerSettings, create_app
from tokensched.server.launch import sim_backend

from .conftest import settle


def test_the_stream_of_a_serving_replica_rebuilds_its_index_through_evictions() -> None:
    # 96 blocks of 16 tokens: six sessions of up to ~900-token prompts cannot all stay cached, so blocks are evicted
    runner, tokenizer = sim_backend(num_kv_blocks=96, block_size=16, realtime=None)
    publisher = ZmqKVEventPublisher("tcp://127.0.0.1:*", flush_interval_s=0.005)
    subscriber = KVEventSubscriber(publisher.endpoint)
    index = CachedBlockIndex()
    try:
        for _ in range(100):  # a PUB socket drops what it sends before the subscription arrives: probe first
            publisher.all_cleared()
            if subscriber.receive(timeout_s=0.1) is not None:
                break
        while subscriber.receive(timeout_s=0.3) is not None:
            pass
        publisher.attach(runner.scheduler)
        server_app = create_app(runner, tokenizer, ServerSettings(model_name="tokensched"))
        with BackgroundServer(server_app) as server:
            workload = SessionWorkload(name="kv", sessions=6, turns=3, system_chars=400, user_chars=150, concurrency=3)
            report = run_sessions(server.url, workload)
            assert report.failed == []
            settle(lambda: runner.stats, lambda s: s.num_running + s.num_waiting == 0)  # type: ignore[attr-defined]
            stored = removed = 0
            while (got := subscriber.receive(timeout_s=0.5)) is not None:
                _, batch = got
                index.apply(batch.events)
                stored += sum(type(e).__name__ == "BlockStored" for e in batch.events)
                removed += sum(type(e).__name__ == "BlockRemoved" for e in batch.events)
            assert httpx.get(server.url + "/health", timeout=5).status_code == 200
            assert stored > 0 and removed > 0, "the run should both store and evict blocks"
            assert index.hashes == set(runner.scheduler.pool._index)
    finally:
        publisher.close()
        subscriber.close()


def test_serve_refuses_an_endpoint_it_cannot_bind() -> None:
    result = CliRunner().invoke(cli, ["serve", "--kv-events-endpoint", "tcp://256.0.0.1:1"])
    assert result.exit_code == 2
    assert "cannot bind the KV-event socket" in result.output
