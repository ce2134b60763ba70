"""What the server tells its operator: a start-up banner, and a periodic stats line like vLLM's.

The banner states everything a deployment decision rests on (is auth on,
what is served, how much context fits, where it listens, what the limits
are), so a misconfiguration is visible in the first lines of the log, not in
the first failed request. The stats line is one line per interval with the
running and waiting requests, KV usage, prefix-cache hit rate and the
prompt and generation throughput over the interval.
"""

from __future__ import annotations

import asyncio
import logging
import time

from tokensched.server.metrics import ServerMetrics
from tokensched.server.runner import EngineRunner
from tokensched.server.settings import ServerSettings

log = logging.getLogger("tokensched.server")


def banner(runner: EngineRunner, settings: ServerSettings, *, connection_limit: int, url: str) -> list[str]:
    """The start-up lines (no secrets: the key itself is never printed)."""
    config = runner.config
    auth = "on (Authorization: Bearer <key> on /v1)" if settings.api_key is not None else "OFF (no API key set)"
    return [
        f"tokensched: serving model {settings.model_name!r} at {url}/v1",
        f"tokensched: auth {auth}",
        f"tokensched: executor {type(runner.executor).__name__}, policy {runner.scheduler.policy.name}",
        f"tokensched: KV pool {config.num_blocks} blocks x {config.block_size} tokens = "
        f"{config.num_tokens_capacity} tokens; max_model_len {config.max_model_len}",
        f"tokensched: limits: {connection_limit} connections, body {settings.max_body_bytes} bytes, "
        f"{settings.max_requests_per_client or 'unlimited'} requests per client, header timeout "
        f"{settings.header_timeout_s:g} s, body timeout {settings.body_timeout_s:g} s, "
        f"keep-alive {settings.keep_alive_timeout_s:g} s, "
        f"drain {settings.drain_timeout_s:g} s",
    ]


class StatsLine:
    """Formats the interval's figures from two snapshots of the counters."""

    def __init__(self, runner: EngineRunner, metrics: ServerMetrics) -> None:
        self._runner = runner
        self._metrics = metrics
        self._last = (time.monotonic(), metrics.prompt_tokens, metrics.generation_tokens)

    def line(self) -> str:
        now, prompt, generated = time.monotonic(), self._metrics.prompt_tokens, self._metrics.generation_tokens
        then, prompt0, generated0 = self._last
        self._last = (now, prompt, generated)
        elapsed = max(now - then, 1e-9)
        stats = self._runner.stats
        return (
            f"Avg prompt throughput: {(prompt - prompt0) / elapsed:.1f} tokens/s, "
            f"Avg generation throughput: {(generated - generated0) / elapsed:.1f} tokens/s, "
            f"Running: {stats.num_running} reqs, Waiting: {stats.num_waiting} reqs, "
            f"KV cache usage: {100 * stats.kv_usage:.1f}%, Prefix cache hit rate: {100 * stats.prefix_hit_rate:.1f}%"
        )


async def log_stats(stats_line: StatsLine, interval_s: float) -> None:
    """Log :meth:`StatsLine.line` every ``interval_s`` until cancelled."""
    while True:
        await asyncio.sleep(interval_s)
        log.info("%s", stats_line.line())
