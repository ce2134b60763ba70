"""Serving metrics in the Prometheus text format, named and bucketed like vLLM's so its dashboards read them.

The families tokensched shares with vLLM (requests running and waiting, KV
usage, prefix-cache queries and hits, preemptions, prompt and generation
tokens, TTFT, inter-token, end-to-end, queue, prefill and decode latencies,
request lengths and parameters) carry vLLM's names, types, buckets and
labels (``model_name`` and ``engine``), as defined in vLLM's
``vllm/v1/metrics/loggers.py`` (commit 005a810b). ``prefix="vllm"`` names
them ``vllm:...`` so vLLM's published Grafana dashboard works unchanged;
the default ``prefix="tokensched"`` names them ``tokensched:...``.
tokensched's own figures (steps in flight, pending blocks, failed steps,
refusals) are always ``tokensched:...``.

Latencies are measured on the server's wall clock: accepted (the HTTP
request was parsed), scheduled (the engine first launched a step for it),
first token, finished. Tokens are counted as they are produced, not when the
request ends. Scheduler state comes from the engine thread's latest stats
snapshot, so a scrape never touches the scheduler. Only the event-loop
thread observes and renders, so nothing here is locked.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from typing import Literal

import attrs

from tokensched.server.runner import SpecDecodeCounters
from tokensched.stats import SchedulerStats

Kind = Literal["counter", "gauge", "histogram"]

# vLLM's buckets (vllm/v1/metrics/loggers.py, commit 005a810b)
TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
    160.0, 640.0, 2560.0,
)  # fmt: skip
TPOT_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0,
    1920.0, 7680.0,
)  # fmt: skip
N_BUCKETS = (1, 2, 5, 10, 20)


def one_two_five_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50... up to ``max_value`` (vLLM's ``build_1_2_5_buckets``, for token counts)."""
    buckets: list[int] = []
    scale = 1
    while True:
        for mantissa in (1, 2, 5):
            if mantissa * scale > max_value:
                return tuple(buckets)
            buckets.append(mantissa * scale)
        scale *= 10


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

    def render(self, name: str | None = None, labels: dict[str, str] | None = None) -> list[str]:
        name = name or self.name
        base = dict(labels or {})
        lines = [f"# HELP {name} {self.help_text}", f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, count in zip((*self.buckets, math.inf), self._counts, strict=True):
            cumulative += count
            lines.append(f"{name}_bucket{_labels(base | {'le': _number(bound)})} {cumulative}")
        lines.append(f"{name}_sum{_labels(base)} {_number(self.sum)}")
        lines.append(f"{name}_count{_labels(base)} {self.count}")
        return lines


@attrs.define(slots=True)
class RequestTiming:
    """One finished request's figures, all optional times in seconds since it was accepted."""

    reason: str
    e2e: float
    prompt_tokens: int
    generation_tokens: int
    max_tokens: int
    scheduled: float | None = None  # first launched in a step
    first_token: float | None = None


class ServerMetrics:
    """Everything ``/metrics`` reports. :class:`~tokensched.server.generation.Generation` calls the ``on_*`` hooks."""

    def __init__(
        self, model_name: str = "tokensched", prefix: str = "tokensched", max_model_len: int = 262_144
    ) -> None:
        self.prefix = prefix
        self.labels = {"model_name": model_name, "engine": "0"}  # vLLM's label names; one engine here
        lengths = one_two_five_buckets(max_model_len)
        self.ttft = Histogram(
            "time_to_first_token_seconds", "Histogram of time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = Histogram(
            "inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", TPOT_BUCKETS
        )
        self.tpot = Histogram(
            "time_per_output_token_seconds", "Histogram of time per output token in seconds.", TPOT_BUCKETS
        )
        self.e2e = Histogram(
            "e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.", REQUEST_LATENCY_BUCKETS
        )
        self.queue = Histogram(
            "request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.inference = Histogram(
            "request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.prefill = Histogram(
            "request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.decode = Histogram(
            "request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            REQUEST_LATENCY_BUCKETS,
        )
        self.request_prompt = Histogram("request_prompt_tokens", "Number of prefill tokens processed.", lengths)
        self.request_generation = Histogram(
            "request_generation_tokens", "Number of generation tokens processed.", lengths
        )
        self.max_generation = Histogram(
            "request_max_num_generation_tokens", "Histogram of maximum number of requested generation tokens.", lengths
        )
        self.params_max_tokens = Histogram(
            "request_params_max_tokens", "Histogram of the max_tokens request parameter.", lengths
        )
        self.params_n = Histogram("request_params_n", "Histogram of the n request parameter.", N_BUCKETS)
        self.finished: dict[str, int] = {}
        self.rejected: dict[str, int] = {}
        self.prompt_tokens = 0
        self.generation_tokens = 0

    # --- hooks -------------------------------------------------------------------------------------

    def on_first_token(self, seconds: float, prompt_tokens: int) -> None:
        """The first token arrived ``seconds`` after accept: the whole prompt has been processed."""
        self.ttft.observe(seconds)
        self.prompt_tokens += prompt_tokens

    def on_tokens(self, gap_seconds: float, num_tokens: int, *, first: bool = False) -> None:
        """``num_tokens`` arrived ``gap_seconds`` after the previous ones of the same request (or are its first)."""
        if num_tokens <= 0:
            return
        self.generation_tokens += num_tokens
        gaps = num_tokens - 1 if first else num_tokens  # the first token has no gap before it
        if gaps > 0:
            per_token = 0.0 if first else gap_seconds / num_tokens
            self.itl.observe(per_token, times=gaps)
            self.tpot.observe(per_token, times=gaps)

    def on_finished(self, timing: RequestTiming) -> None:
        self.finished[timing.reason] = self.finished.get(timing.reason, 0) + 1
        self.e2e.observe(timing.e2e)
        self.request_prompt.observe(timing.prompt_tokens)
        self.request_generation.observe(timing.generation_tokens)
        self.max_generation.observe(timing.max_tokens)
        self.params_max_tokens.observe(timing.max_tokens)
        self.params_n.observe(1)
        if timing.scheduled is not None:
            self.queue.observe(timing.scheduled)
            self.inference.observe(timing.e2e - timing.scheduled)
            if timing.first_token is not None:
                self.prefill.observe(timing.first_token - timing.scheduled)
                self.decode.observe(timing.e2e - timing.first_token)

    def on_rejected(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    # --- exposition --------------------------------------------------------------------------------

    def render(self, stats: SchedulerStats | None, spec: SpecDecodeCounters | None = None) -> str:
        shared, own, labels = f"{self.prefix}:", "tokensched:", self.labels
        lines: list[str] = []

        def scalar(kind: Kind, name: str, help_text: str, value: float) -> None:
            lines.extend(
                [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name}{_labels(labels)} {_number(value)}"]
            )

        if stats is not None:
            scalar(
                "gauge",
                shared + "num_requests_running",
                "Number of requests in model execution batches.",
                stats.num_running,
            )
            scalar(
                "gauge",
                shared + "num_requests_waiting",
                "Number of requests waiting to be processed.",
                stats.num_waiting,
            )
            scalar(
                "gauge", shared + "kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", stats.kv_usage
            )
            scalar("gauge", shared + "gpu_cache_usage_perc", "KV-cache usage (vLLM's older name).", stats.kv_usage)
            scalar(
                "counter",
                shared + "prefix_cache_queries_total",
                "Prefix cache queries, in tokens.",
                stats.prefix_query_tokens,
            )
            scalar(
                "counter", shared + "prefix_cache_hits_total", "Prefix cache hits, in tokens.", stats.prefix_hit_tokens
            )
            scalar(
                "counter", shared + "num_preemptions_total", "Cumulative number of preemptions.", stats.num_preemptions
            )
        scalar("counter", shared + "prompt_tokens_total", "Number of prefill tokens processed.", self.prompt_tokens)
        scalar(
            "counter",
            shared + "generation_tokens_total",
            "Number of generation tokens processed.",
            self.generation_tokens,
        )
        name = shared + "request_success_total"
        lines += [f"# HELP {name} Count of finished requests, by finish reason.", f"# TYPE {name} counter"]
        for reason, count in sorted(self.finished.items()):
            lines.append(f"{name}{_labels(labels | {'finished_reason': reason})} {count}")
        for histogram in (
            self.ttft, self.itl, self.tpot, self.e2e, self.queue, self.inference, self.prefill, self.decode,
            self.request_prompt, self.request_generation, self.max_generation, self.params_max_tokens, self.params_n,
        ):  # fmt: skip
            lines += histogram.render(shared + histogram.name, labels)
        if spec is not None and spec.num_drafts > 0:
            scalar(
                "counter", shared + "spec_decode_num_drafts_total", "Number of spec decoding drafts.", spec.num_drafts
            )
            scalar(
                "counter",
                shared + "spec_decode_num_draft_tokens_total",
                "Number of draft tokens.",
                spec.num_draft_tokens,
            )
            scalar(
                "counter",
                shared + "spec_decode_num_accepted_tokens_total",
                "Number of accepted tokens.",
                spec.num_accepted_tokens,
            )
            name = shared + "spec_decode_num_accepted_tokens_per_pos_total"
            lines += [f"# HELP {name} Accepted tokens per draft position.", f"# TYPE {name} counter"]
            for position, count in enumerate(spec.accepted_per_position):
                lines.append(f"{name}{_labels(labels | {'position': str(position)})} {count}")
        if stats is not None:
            scalar(
                "gauge", own + "num_steps_in_flight", "Steps launched and not yet applied.", stats.num_steps_in_flight
            )
            scalar(
                "gauge",
                own + "kv_cache_pending_blocks",
                "KV blocks held for a step in flight.",
                stats.num_pending_blocks,
            )
            scalar("gauge", own + "kv_cache_free_blocks", "KV blocks free or evictable.", stats.num_free_blocks)
            scalar("gauge", own + "kv_cache_total_blocks", "KV blocks in the pool.", stats.num_total_blocks)
            scalar(
                "gauge", own + "prefix_cache_hit_rate", "Prefix cache hits over queries, 0 to 1.", stats.prefix_hit_rate
            )
            scalar("counter", own + "num_steps_total", "Steps applied.", stats.num_steps)
            scalar("counter", own + "num_failed_steps_total", "Steps the executor failed.", stats.num_failed_steps)
        name = own + "request_rejected_total"
        lines += [f"# HELP {name} Requests refused before reaching the scheduler, by reason.", f"# TYPE {name} counter"]
        for reason, count in sorted(self.rejected.items()):
            lines.append(f"{name}{_labels(labels | {'reason': reason})} {count}")
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
