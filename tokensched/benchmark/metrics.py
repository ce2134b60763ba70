"""Serving metrics from timestamped request outputs: latency, throughput, cache and queue figures.

A :class:`MetricsCollector` is fed by whoever runs the engine: each arrival,
each step's :class:`~tokensched.plan.RequestOutput` s with the executor clock
reading when they were collected, and now and then the scheduler's stats. It
summarises into a :class:`MetricsSummary` (pydantic, JSON-serialisable).

Only requests that *arrive* inside the measurement window count towards
latencies and offered load, so a warm-up (sessions still ramping up) and the
drain after the last arrival do not blur a load level. A request in the window
that never got its first token is counted with the time it had waited so far,
a lower bound: its true TTFT is at least that, so the percentiles can only be
too kind, never too harsh, and ``num_censored`` says how many such bounds are in.

Definitions (``n`` = output tokens of a request):

- TTFT: first token time minus arrival time.
- ITL: the gap between consecutive deliveries of a request divided by the tokens
  delivered (one sample per delivery; speculative steps deliver several).
- TPOT: ``(last - first token time) / (n - 1)``; TPS per user is its inverse,
  the decode speed one user sees.
- TPM: prompt tokens arriving per minute (the *offered* load, cached or not);
  ``served_tpm`` counts them when their prefill completes instead (whenever they
  arrived). Per-GPU figures divide by ``num_gpus``.
- Overloaded: the queue is still growing at the end of the window, so the window's
  percentiles describe the window's length, not a steady state. Judged over the
  window's second half: the least-squares trend of TTFT against arrival time
  (censored requests count with their wait so far) grows by more than
  ``max(OVERLOAD_MIN_GROWTH_S, half the half's median TTFT)``
  (a queue growing steadily from the window's start grows by 2/3 of that median), or more than
  ``OVERLOAD_CENSORED_SHARE`` of the window's requests never got a first token.
  A queue that is long but flat is overloaded too (*saturated*): over the second half,
  the mean number of requests waiting for their first token, by Little's law
  ``L = arrivals per second x mean TTFT``, is at least ``OVERLOAD_WAITING`` (4). In an
  M/M/1 queue ``L = rho / (1 - rho)``, so ``L >= 4`` is utilisation ``rho >= 0.8``, where
  ``d ln TTFT / d ln load = rho / (1 - rho) >= 4``: a 5% change in load moves TTFT by
  20% or more, and the p50 measures the queue, not the server. (A point at the
  published TTFTs, 1.1 s or 5.1 s with ~0.35 turns/s, has ``L`` of 0.4-1.8.)
  The thresholds are this project's choice, not published ones.
- KV: ``kv_usage`` is the share of the pool that cannot be handed out now (blocks held
  by running requests or by a step in flight); ``kv_resident`` adds the cached blocks
  nobody holds (the prefix cache's contents), i.e. the share of the pool holding KV.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Annotated, Protocol

import attrs
from pydantic import BaseModel, BeforeValidator, ConfigDict

from tokensched.errors import InvalidRequest, UnknownRequest
from tokensched.plan import OutputBatch, RequestOutput
from tokensched.run_outputs import PlainStepOutputs

_TIMELINE_POINTS = 200
OVERLOAD_MIN_GROWTH_S = 2.0
OVERLOAD_CENSORED_SHARE = 0.05
OVERLOAD_WAITING = 4.0

MaybeNaN = Annotated[float, BeforeValidator(lambda value: math.nan if value is None else value)]
"""A float that may be NaN (no data): JSON writes NaN as null, and null reads back as NaN."""


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of sorted values, interpolating linearly (numpy's default)."""
    if not sorted_values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    fraction = position - low
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * fraction


class Distribution(BaseModel):
    """Summary of a sample; every figure is NaN when the sample is empty."""

    model_config = ConfigDict(frozen=True)

    count: int
    mean: MaybeNaN
    min: MaybeNaN
    p10: MaybeNaN
    p50: MaybeNaN
    p90: MaybeNaN
    p99: MaybeNaN
    max: MaybeNaN

    @classmethod
    def of(cls, values: Iterable[float]) -> Distribution:
        data = sorted(values)
        if not data:
            nan = math.nan
            return cls(count=0, mean=nan, min=nan, p10=nan, p50=nan, p90=nan, p99=nan, max=nan)
        return cls(
            count=len(data),
            mean=math.fsum(data) / len(data),
            min=data[0],
            p10=percentile(data, 10),
            p50=percentile(data, 50),
            p90=percentile(data, 90),
            p99=percentile(data, 99),
            max=data[-1],
        )


class TimelinePoint(BaseModel):
    """The scheduler's queues and KV pool at one moment."""

    model_config = ConfigDict(frozen=True)

    t: float
    waiting: int
    running: int
    kv_usage: float


class MetricsSummary(BaseModel):
    """Everything measured over one window of one run. Times in seconds."""

    model_config = ConfigDict(frozen=True)

    window_start_s: float
    window_end_s: float
    num_gpus: int
    num_requests: int  # arrived in the window
    num_first_token: int
    num_finished: int
    num_censored: int  # in the window, no first token by the end: TTFT counted as a lower bound
    ttft_s: Distribution
    ttft_slo_attainment: MaybeNaN  # share of requests whose TTFT met ``ttft_slo_s`` (NaN without a target)
    itl_s: Distribution
    tpot_s: Distribution
    tps_per_user: Distribution
    tpm: float
    tpm_per_gpu: float
    served_tpm: float
    output_tps: float
    output_tps_per_gpu: float
    prefix_cache_hit_rate: MaybeNaN  # scheduler counters: hit tokens / looked-up tokens (NaN if no lookups)
    cached_prompt_fraction: MaybeNaN  # per request: cached prompt tokens / prompt tokens
    ttft_growth_s: MaybeNaN  # TTFT trend over the window's second half (slope x half the window)
    queue_growth: MaybeNaN  # waiting-queue trend over the same half (slope x half the window)
    overloaded: bool  # growing or saturated queue: no steady-state percentile (see module docstring)
    waiting_for_first_token: MaybeNaN = float("nan")  # Little's law over the second half: arrivals/s x mean TTFT
    saturated: bool = False  # waiting_for_first_token >= OVERLOAD_WAITING (part of ``overloaded``)
    num_preemptions: int
    kv_usage_mean: MaybeNaN
    kv_usage_max: MaybeNaN
    kv_resident_mean: MaybeNaN = float("nan")  # share of the pool holding KV, the prefix cache's contents included
    queue_len_mean: MaybeNaN
    queue_len_max: int
    running_mean: MaybeNaN
    running_max: int
    timeline: list[TimelinePoint]


class StatsLike(Protocol):
    """The scheduler statistics the collector reads (``Scheduler.stats()`` provides them)."""

    @property
    def num_waiting(self) -> int: ...
    @property
    def num_running(self) -> int: ...
    @property
    def kv_usage(self) -> float: ...
    @property
    def prefix_hit_tokens(self) -> int: ...
    @property
    def prefix_query_tokens(self) -> int: ...
    @property
    def num_preemptions(self) -> int: ...


@attrs.define(slots=True)
class _Request:
    arrival: float
    prompt_tokens: int
    in_window: bool
    first_token: float = -1.0
    last_token: float = -1.0
    num_output: int = 0
    num_cached: int = 0
    finished: bool = False


@attrs.frozen(slots=True)
class _Sample:
    t: float
    waiting: int
    running: int
    kv_usage: float
    kv_resident: float
    hit_tokens: int
    query_tokens: int
    preemptions: int


class MetricsCollector:
    """Accumulates one run's timeline; cheap per output so it can sit on the engine's hot path."""

    def __init__(
        self,
        *,
        num_gpus: int = 1,
        window_start: float = 0.0,
        window_end: float = math.inf,
        sample_interval_s: float = 1.0,
        ttft_slo_s: float | None = None,
    ) -> None:
        if num_gpus < 1:
            raise ValueError(f"num_gpus must be at least 1, got {num_gpus}")
        if not window_start < window_end:
            raise ValueError(f"empty window [{window_start}, {window_end})")
        if not sample_interval_s > 0:
            raise ValueError(f"sample_interval_s must be positive, got {sample_interval_s}")
        self.num_gpus = num_gpus
        self.window_start = window_start
        self.window_end = window_end
        self.sample_interval_s = sample_interval_s
        self.ttft_slo_s = ttft_slo_s
        self.next_sample_time = 0.0  # call on_stats once the clock reaches this
        self._requests: dict[str, _Request] = {}
        self._itl: list[float] = []
        self._window_output_tokens = 0
        self._samples: list[_Sample] = []

    def on_arrival(self, request_id: str, prompt_tokens: int, arrival_time: float) -> None:
        if request_id in self._requests:
            raise InvalidRequest(f"request {request_id!r} arrived twice")
        in_window = self.window_start <= arrival_time < self.window_end
        self._requests[request_id] = _Request(arrival_time, prompt_tokens, in_window)

    def on_outputs(self, outputs: Iterable[RequestOutput], now: float) -> None:
        """Record the tokens of one step, all delivered at ``now``."""
        self.on_steps(((now, outputs),))

    def on_steps(self, steps: Iterable[tuple[float, Iterable[RequestOutput]]]) -> None:
        """Record the outputs of consecutive steps, each step's delivered at its time (a decode run's, say).

        The same as :meth:`on_outputs` step by step, in one loop: a simulated
        hour records ~100k steps of one to three outputs each, so the calls
        and lookups around each step cost more than the outputs themselves.
        A step of appends is read from its columns: a run's
        (:class:`~tokensched.run_outputs.PlainStepOutputs`, its requests looked
        up once for the run) and a single step's
        (:meth:`OutputBatch.plain_columns <tokensched.plan.OutputBatch.plain_columns>`).
        """
        requests = self._requests
        itl = self._itl
        start, end = self.window_start, self.window_end
        window_tokens = 0
        run_ids: list[str] | None = None  # the run whose requests ``found`` holds (looked up once a run)
        found: list[_Request | None] = []
        try:
            for now, outputs in steps:
                counted = start <= now < end
                if type(outputs) is OutputBatch:
                    plain = outputs.plain_columns()
                    if plain is None:
                        columns = False  # a finish, an event or logprobs among them: output by output below
                    else:  # a single step of appends: its columns, its requests looked up for this step
                        ids, tokens, cached = plain
                        rows: Iterable[int] = range(len(ids))
                        run_ids, found = None, [requests.get(request_id) for request_id in ids]
                        columns = True
                elif type(outputs) is PlainStepOutputs:  # a run's step of appends: read from its columns
                    ids, tokens, cached, rows = outputs.request_ids, outputs.tokens, outputs.num_cached, outputs.rows
                    if ids is not run_ids:
                        run_ids, found = ids, [requests.get(request_id) for request_id in ids]
                    columns = True
                else:
                    columns = False
                if columns:  # row r of the step is request i of the columns
                    for r, i in enumerate(rows):
                        request = found[i]
                        if request is None:
                            raise UnknownRequest(f"output for request {ids[i]!r}, which never arrived")
                        delivered = len(tokens[r])
                        if delivered:
                            if request.num_output == 0:
                                request.first_token = now
                            elif request.in_window:
                                itl.append((now - request.last_token) / delivered)
                            request.last_token = now
                            request.num_output += delivered
                            if counted:
                                window_tokens += delivered
                        if cached[i] > request.num_cached:
                            request.num_cached = cached[i]
                    continue
                for output in outputs:
                    request = requests.get(output.request_id)
                    if request is None:
                        raise UnknownRequest(f"output for request {output.request_id!r}, which never arrived")
                    delivered = len(output.new_token_ids)
                    if delivered:
                        if request.num_output == 0:
                            request.first_token = now
                        elif request.in_window:
                            itl.append((now - request.last_token) / delivered)
                        request.last_token = now
                        request.num_output += delivered
                        if counted:
                            window_tokens += delivered
                    if output.num_cached_tokens > request.num_cached:
                        request.num_cached = output.num_cached_tokens
                    if output.finish_reason is not None:
                        request.finished = True
        finally:
            self._window_output_tokens += window_tokens

    def on_stats(self, now: float, stats: StatsLike) -> None:
        """Record a sample of the scheduler's state (call when ``now >= next_sample_time``, and at the end)."""
        self._samples.append(
            _Sample(
                t=now,
                waiting=stats.num_waiting,
                running=stats.num_running,
                kv_usage=stats.kv_usage,
                kv_resident=stats.kv_usage + _evictable_share(stats),
                hit_tokens=stats.prefix_hit_tokens,
                query_tokens=stats.prefix_query_tokens,
                preemptions=stats.num_preemptions,
            )
        )
        self.next_sample_time = now + self.sample_interval_s

    def summarize(self, end_time: float) -> MetricsSummary:
        """The summary of the window, clipped to ``end_time`` (the clock when the run stopped)."""
        start = self.window_start
        end = min(self.window_end, end_time)
        span = max(end - start, 1e-9)
        window = [r for r in self._requests.values() if r.in_window]
        ttft: list[float] = []
        arrivals: list[float] = []
        censored = 0
        tpot: list[float] = []
        served_tokens = 0
        for r in self._requests.values():
            if r.num_output and start <= r.first_token < end:
                served_tokens += r.prompt_tokens
        for r in window:
            arrivals.append(r.arrival)
            if r.num_output:
                ttft.append(r.first_token - r.arrival)
            else:
                ttft.append(max(end_time - r.arrival, 0.0))
                censored += 1
            if r.num_output >= 2 and r.last_token > r.first_token:
                per_token = (r.last_token - r.first_token) / (r.num_output - 1)
                if per_token > 0.0:  # a gap of a few subnormal seconds divides to 0.0, which has no tokens/s
                    tpot.append(per_token)
        started = [r for r in window if r.num_output]
        prompt_started = sum(r.prompt_tokens for r in started)
        samples = [s for s in self._samples if start <= s.t <= end] or self._samples[-1:]
        first, last = _counter_bounds(self._samples, start, end)
        hits = last.hit_tokens - first.hit_tokens if first and last else 0
        queries = last.query_tokens - first.query_tokens if first and last else 0
        offered_tpm = sum(r.prompt_tokens for r in window) / span * 60
        served_tpm = served_tokens / span * 60
        output_tps = self._window_output_tokens / span
        middle = (start + end) / 2
        late = [(t, x) for t, x in zip(arrivals, ttft, strict=True) if t >= middle]
        ttft_growth = _slope(late) * (end - middle)
        queue_growth = _slope([(q.t, float(q.waiting)) for q in samples if q.t >= middle]) * (end - middle)
        late_p50 = percentile(sorted(x for _, x in late), 50)
        waiting = len(late) / max(end - middle, 1e-9) * _mean(x for _, x in late) if late else math.nan
        saturated = not math.isnan(waiting) and waiting >= OVERLOAD_WAITING
        overloaded = (
            censored > OVERLOAD_CENSORED_SHARE * len(window)
            or ttft_growth > max(OVERLOAD_MIN_GROWTH_S, 0.5 * late_p50 if not math.isnan(late_p50) else 0.0)
            or saturated
        )
        return MetricsSummary(
            window_start_s=start,
            window_end_s=end,
            num_gpus=self.num_gpus,
            num_requests=len(window),
            num_first_token=len(started),
            num_finished=sum(1 for r in window if r.finished),
            num_censored=censored,
            ttft_s=Distribution.of(ttft),
            ttft_slo_attainment=_share_within(ttft, self.ttft_slo_s),
            itl_s=Distribution.of(self._itl),
            tpot_s=Distribution.of(tpot),
            tps_per_user=Distribution.of(1 / t for t in tpot),
            tpm=offered_tpm,
            tpm_per_gpu=offered_tpm / self.num_gpus,
            served_tpm=served_tpm,
            output_tps=output_tps,
            output_tps_per_gpu=output_tps / self.num_gpus,
            prefix_cache_hit_rate=hits / queries if queries else math.nan,
            cached_prompt_fraction=sum(r.num_cached for r in started) / prompt_started if prompt_started else math.nan,
            ttft_growth_s=ttft_growth,
            queue_growth=queue_growth,
            overloaded=overloaded,
            waiting_for_first_token=waiting,
            saturated=saturated,
            num_preemptions=last.preemptions - first.preemptions if first and last else 0,
            kv_usage_mean=_mean(s.kv_usage for s in samples),
            kv_usage_max=max((s.kv_usage for s in samples), default=math.nan),
            kv_resident_mean=_mean(s.kv_resident for s in samples),
            queue_len_mean=_mean(s.waiting for s in samples),
            queue_len_max=max((s.waiting for s in samples), default=0),
            running_mean=_mean(s.running for s in samples),
            running_max=max((s.running for s in samples), default=0),
            timeline=_timeline(self._samples),
        )


def _counter_bounds(samples: list[_Sample], start: float, end: float) -> tuple[_Sample | None, _Sample | None]:
    """The last sample at or before ``start`` and the last at or before ``end`` (cumulative counters)."""
    first: _Sample | None = None
    last: _Sample | None = None
    for sample in samples:
        if sample.t <= start or first is None:
            first = sample
        if sample.t <= end or last is None:
            last = sample
    return first, last


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``y`` against ``t`` (NaN with fewer than two distinct times)."""
    if len(points) < 2:
        return math.nan
    mean_t = math.fsum(t for t, _ in points) / len(points)
    mean_y = math.fsum(y for _, y in points) / len(points)
    spread = math.fsum((t - mean_t) ** 2 for t, _ in points)
    if spread == 0:
        return math.nan
    return math.fsum((t - mean_t) * (y - mean_y) for t, y in points) / spread


def _share_within(values: list[float], limit: float | None) -> float:
    if limit is None or not values:
        return math.nan
    return sum(1 for v in values if v <= limit) / len(values)


def _evictable_share(stats: StatsLike) -> float:
    """Cached blocks nobody holds, as a share of the pool (0 for stats that do not count them)."""
    total = getattr(stats, "num_total_blocks", 0)
    return getattr(stats, "num_evictable_blocks", 0) / total if total else 0.0


def _mean(values: Iterable[float]) -> float:
    data = list(values)
    return math.fsum(data) / len(data) if data else math.nan


def _timeline(samples: list[_Sample]) -> list[TimelinePoint]:
    stride = max(1, math.ceil(len(samples) / _TIMELINE_POINTS))
    picked = samples[::stride]
    if samples and picked[-1] is not samples[-1]:
        picked.append(samples[-1])
    return [TimelinePoint(t=s.t, waiting=s.waiting, running=s.running, kv_usage=s.kv_usage) for s in picked]
