"""Serving metrics in the Prometheus text exposition format, written by hand.

Latencies are measured where a client feels them: on the server's wall clock,
from the moment a request is accepted to the moment its tokens are handed to
the HTTP layer. Scheduler state (running, waiting, KV usage, prefix hits)
comes from the latest stats snapshot the engine thread published, so a scrape
never touches the scheduler itself.

Only the event-loop thread observes and renders, so nothing here is locked.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence

from tokensched.stats import SchedulerStats

PREFIX = "tokensched_"

TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.01, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class Histogram:
    """Cumulative-bucket histogram; ``observe`` is O(log buckets)."""

    def __init__(self, name: str, help_text: str, buckets: Sequence[float]) -> None:
        if list(buckets) != sorted(buckets) or len(set(buckets)) != len(buckets):
            raise ValueError(f"histogram {name}: buckets must be strictly increasing, got {buckets}")
        self.name = name
        self.help_text = help_text
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Record ``value`` ``times`` times (several tokens that arrived together share one gap)."""
        self._counts[bisect_left(self.buckets, value)] += times
        self.sum += value * times
        self.count += times

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), self._counts, strict=True):
            cumulative += count
            lines.append(f'{self.name}_bucket{{le="{_number(bound)}"}} {cumulative}')
        lines.append(f"{self.name}_sum {_number(self.sum)}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class LabelledCounter:
    """A counter family keyed by one label (finish reason, rejection reason)."""

    def __init__(self, name: str, help_text: str, label: str) -> None:
        self.name = name
        self.help_text = help_text
        self.label = label
        self.values: dict[str, float] = {}

    def inc(self, label_value: str, amount: float = 1.0) -> None:
        self.values[label_value] = self.values.get(label_value, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} counter"]
        for value, amount in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels({self.label: value})} {_number(amount)}")
        return lines


def _scalar(kind: str, name: str, help_text: str, value: float) -> list[str]:
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {_number(value)}"]


class ServerMetrics:
    """Everything ``/metrics`` reports. The HTTP layer calls the ``on_*`` hooks."""

    def __init__(self) -> None:
        self.ttft = Histogram(
            PREFIX + "time_to_first_token_seconds", "Time from request accept to its first token.", TTFT_BUCKETS
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds", "Time between successive output tokens of a request.", ITL_BUCKETS
        )
        self.e2e = Histogram(
            PREFIX + "e2e_request_latency_seconds", "Time from request accept to its last token.", E2E_BUCKETS
        )
        self.finished = LabelledCounter(
            PREFIX + "request_success_total", "Requests finished, by finish reason.", "finished_reason"
        )
        self.rejected = LabelledCounter(
            PREFIX + "request_rejected_total", "Requests refused before reaching the scheduler, by reason.", "reason"
        )
        self.prompt_tokens = 0
        self.generation_tokens = 0

    def on_first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def on_tokens(self, gap_seconds: float, num_tokens: int) -> None:
        """``num_tokens`` arrived ``gap_seconds`` after the previous ones of the same request."""
        if num_tokens > 0:
            self.itl.observe(gap_seconds / num_tokens, times=num_tokens)

    def on_finished(self, reason: str, e2e_seconds: float, prompt_tokens: int, generation_tokens: int) -> None:
        self.e2e.observe(e2e_seconds)
        self.finished.inc(reason)
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generation_tokens

    def on_rejected(self, reason: str) -> None:
        self.rejected.inc(reason)

    def render(self, stats: SchedulerStats | None) -> str:
        lines: list[str] = []
        if stats is not None:
            lines += _scalar(
                "gauge", PREFIX + "num_requests_running", "Requests in the running set.", stats.num_running
            )
            lines += _scalar("gauge", PREFIX + "num_requests_waiting", "Requests waiting to run.", stats.num_waiting)
            lines += _scalar(
                "gauge",
                PREFIX + "num_steps_in_flight",
                "Steps launched and not yet applied.",
                stats.num_steps_in_flight,
            )
            lines += _scalar("gauge", PREFIX + "kv_cache_usage_perc", "KV-cache usage, 0 to 1.", stats.kv_usage)
            lines += _scalar("gauge", PREFIX + "kv_cache_free_blocks", "Free KV blocks.", stats.num_free_blocks)
            lines += _scalar(
                "gauge", PREFIX + "kv_cache_total_blocks", "KV blocks in the pool.", stats.num_total_blocks
            )
            lines += _scalar(
                "counter", PREFIX + "prefix_cache_queries_total", "Prompt tokens looked up.", stats.prefix_query_tokens
            )
            lines += _scalar(
                "counter", PREFIX + "prefix_cache_hits_total", "Prompt tokens served by it.", stats.prefix_hit_tokens
            )
            lines += _scalar(
                "gauge", PREFIX + "prefix_cache_hit_rate", "Hits over queries, 0 to 1.", stats.prefix_hit_rate
            )
            lines += _scalar("counter", PREFIX + "num_preemptions_total", "Preemptions.", stats.num_preemptions)
        lines += _scalar(
            "counter", PREFIX + "prompt_tokens_total", "Prompt tokens of finished requests.", self.prompt_tokens
        )
        lines += _scalar(
            "counter",
            PREFIX + "generation_tokens_total",
            "Tokens generated for finished requests.",
            self.generation_tokens,
        )
        lines += self.finished.render()
        lines += self.rejected.render()
        lines += self.ttft.render()
        lines += self.itl.render()
        lines += self.e2e.render()
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
