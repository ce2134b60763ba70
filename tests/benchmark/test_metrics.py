import itertools
import json
import math
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.benchmark.metrics import Distribution, MetricsCollector, MetricsSummary, percentile
from tokensched.errors import InvalidRequest, UnknownRequest
from tokensched.plan import FinishReason, RequestOutput


@dataclass(frozen=True)
class Stats:
    num_waiting: int
    num_running: int
    kv_usage: float
    prefix_hit_tokens: int
    prefix_query_tokens: int
    num_preemptions: int


def out(request_id: str, tokens: int, *, done: bool = False, cached: int = 0) -> RequestOutput:
    return RequestOutput(
        request_id=request_id,
        new_token_ids=list(range(tokens)),
        finish_reason=FinishReason.STOP if done else None,
        num_cached_tokens=cached,
    )


@pytest.fixture
def timeline() -> MetricsCollector:
    """A hand-made run: window [10, 70), two GPUs, the run stops at t=80."""
    m = MetricsCollector(num_gpus=2, window_start=10.0, window_end=70.0, sample_interval_s=30.0)
    m.on_stats(0.0, Stats(0, 0, 0.0, 0, 0, 0))
    m.on_arrival("A", 100, 5.0)  # before the window: counts for throughput only
    m.on_arrival("B", 1_000, 10.0)
    m.on_stats(10.0, Stats(1, 4, 0.2, 100, 200, 1))
    m.on_outputs([out("A", 1), out("B", 1, cached=600)], 12.0)
    m.on_outputs([out("B", 1, cached=600)], 12.5)
    m.on_outputs([out("A", 1, done=True), out("B", 2, done=True, cached=600)], 13.5)  # B: two tokens at once
    m.on_arrival("C", 500, 20.0)
    m.on_outputs([out("C", 0)], 23.0)  # a prefill chunk: no token yet
    m.on_outputs([out("C", 1)], 26.0)
    m.on_outputs([out("C", 1)], 27.0)
    m.on_outputs([out("C", 1, done=True)], 28.0)
    m.on_stats(40.0, Stats(3, 6, 0.5, 400, 800, 2))
    m.on_arrival("D", 200, 60.0)  # never gets a token
    m.on_stats(70.0, Stats(2, 5, 0.8, 700, 1_200, 4))
    m.on_arrival("E", 300, 75.0)  # after the window
    m.on_outputs([out("E", 1)], 76.0)
    m.on_stats(80.0, Stats(9, 9, 1.0, 800, 1_500, 5))
    return m


def test_latencies_count_requests_arriving_in_the_window(timeline: MetricsCollector) -> None:
    s = timeline.summarize(end_time=80.0)
    assert (s.num_requests, s.num_first_token, s.num_finished, s.num_censored) == (3, 2, 2, 1)
    assert s.ttft_s.count == 3
    assert s.ttft_s.p50 == pytest.approx(6.0)  # B: 2, C: 6, D: at least 80 - 60 = 20
    assert s.ttft_s.mean == pytest.approx(28 / 3)
    assert s.ttft_s.max == pytest.approx(20.0)
    # B: 0.5 s for one token, then 1.0 s for two; C: 1.0 s twice
    assert sorted([s.itl_s.min, s.itl_s.p50, s.itl_s.max]) == pytest.approx([0.5, 0.75, 1.0])
    assert s.itl_s.count == 4
    assert s.tpot_s.p50 == pytest.approx(0.75)  # B: 1.5 s / 3, C: 2 s / 2
    assert s.tps_per_user.min == pytest.approx(1.0)
    assert s.tps_per_user.max == pytest.approx(2.0)


def test_throughput_is_per_minute_and_per_gpu(timeline: MetricsCollector) -> None:
    s = timeline.summarize(end_time=80.0)
    assert (s.window_start_s, s.window_end_s) == (10.0, 70.0)
    assert s.tpm == pytest.approx(1_700)  # B + C + D arrived over one minute
    assert s.tpm_per_gpu == pytest.approx(850)
    assert s.served_tpm == pytest.approx(1_600)  # A, B and C got their first token in the window
    assert s.output_tps == pytest.approx(9 / 60)  # A 2 + B 4 + C 3 tokens; E's came after the window
    assert s.output_tps_per_gpu == pytest.approx(9 / 120)


def test_cache_preemption_and_queue_figures_use_the_window(timeline: MetricsCollector) -> None:
    s = timeline.summarize(end_time=80.0)
    assert s.prefix_cache_hit_rate == pytest.approx(600 / 1_000)  # counters at t=70 minus t=10
    assert s.cached_prompt_fraction == pytest.approx(600 / 1_500)
    assert s.num_preemptions == 3
    assert [s.queue_len_mean, s.queue_len_max] == pytest.approx([2.0, 3])
    assert [s.running_mean, s.running_max] == pytest.approx([5.0, 6])
    assert [s.kv_usage_mean, s.kv_usage_max] == pytest.approx([0.5, 0.8])
    assert [p.t for p in s.timeline] == [0.0, 10.0, 40.0, 70.0, 80.0]
    assert timeline.next_sample_time == pytest.approx(110.0)


def test_summary_is_json_with_nan_as_null_and_reads_back() -> None:
    m = MetricsCollector()
    m.on_arrival("x", 10, 0.0)
    s = m.summarize(end_time=1.0)
    data = json.loads(s.model_dump_json())
    assert data["num_censored"] == 1
    assert data["itl_s"]["p50"] is None
    assert math.isnan(s.prefix_cache_hit_rate)
    back = MetricsSummary.model_validate_json(s.model_dump_json())
    assert math.isnan(back.itl_s.p50) and back.model_dump_json() == s.model_dump_json()


def test_percentile_interpolates_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 2.5
    assert percentile(values, 90) == pytest.approx(3.7)
    assert percentile(values, 100) == 4.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)
    empty = Distribution.of([])
    assert empty.count == 0 and math.isnan(empty.p99)


def test_collector_refuses_unknown_and_duplicate_requests() -> None:
    m = MetricsCollector()
    m.on_arrival("x", 10, 0.0)
    with pytest.raises(InvalidRequest, match="twice"):
        m.on_arrival("x", 10, 1.0)
    with pytest.raises(UnknownRequest, match="never arrived"):
        m.on_outputs([out("y", 1)], 1.0)
    with pytest.raises(ValueError, match="empty window"):
        MetricsCollector(window_start=5.0, window_end=5.0)


def _steady_or_growing(growth_per_s: float, *, censor_last: int = 0, base_s: float = 0.5) -> MetricsSummary:
    """One arrival a second over [0, 100); TTFT ``base_s`` plus ``growth_per_s`` per second of arrival time."""
    m = MetricsCollector(window_start=0.0, window_end=100.0, sample_interval_s=1.0)
    for i in range(100):
        m.on_arrival(f"r{i}", 1_000, float(i))
        if i < 100 - censor_last:
            m.on_outputs([out(f"r{i}", 1, done=True)], i + base_s + growth_per_s * i)
        m.on_stats(float(i), Stats(round(growth_per_s * i), 1, 0.5, 0, 0, 0))
    return m.summarize(end_time=100.0)


def test_a_steady_queue_is_not_overloaded() -> None:
    s = _steady_or_growing(0.0)
    assert not s.overloaded
    assert s.ttft_growth_s == pytest.approx(0.0, abs=1e-9) and s.queue_growth == pytest.approx(0.0, abs=1e-9)


def test_a_queue_still_growing_at_the_end_of_the_window_is_overloaded() -> None:
    s = _steady_or_growing(0.2)  # TTFT grows by 10 s over the second half
    assert s.overloaded
    assert s.ttft_growth_s == pytest.approx(10.0)
    assert s.queue_growth == pytest.approx(10.0, rel=0.05)
    assert not _steady_or_growing(0.01).overloaded  # 0.5 s of drift over the half: noise, not divergence


def test_many_requests_without_a_first_token_mean_overloaded() -> None:
    assert _steady_or_growing(0.0, censor_last=10).overloaded


def test_a_long_flat_queue_is_saturated_and_so_overloaded() -> None:
    """TTFT flat at 6 s with one arrival a second: 6 requests wait for a first token on average (Little's law)."""
    long = _steady_or_growing(0.0, base_s=6.0)
    assert long.ttft_growth_s == pytest.approx(0.0, abs=1e-9)
    assert long.waiting_for_first_token == pytest.approx(6.0, rel=0.05)
    assert long.saturated and long.overloaded
    short = _steady_or_growing(0.0, base_s=2.0)  # 2 waiting: utilisation ~0.67 in M/M/1 terms, a steady state
    assert short.waiting_for_first_token == pytest.approx(2.0, rel=0.05)
    assert not short.saturated and not short.overloaded


@dataclass(frozen=True)
class PoolStats(Stats):
    num_total_blocks: int
    num_evictable_blocks: int


def test_kv_resident_counts_the_cached_blocks_nobody_holds() -> None:
    m = MetricsCollector(window_start=0.0, window_end=10.0, sample_interval_s=1.0)
    m.on_stats(0.0, PoolStats(0, 1, 0.1, 0, 0, 0, num_total_blocks=100, num_evictable_blocks=60))
    m.on_stats(5.0, PoolStats(0, 1, 0.3, 0, 0, 0, num_total_blocks=100, num_evictable_blocks=40))
    s = m.summarize(end_time=10.0)
    assert s.kv_usage_mean == pytest.approx(0.2)  # held by running requests
    assert s.kv_resident_mean == pytest.approx(0.7)  # held + cached


_STEPS = st.lists(
    st.tuples(
        st.floats(0.0, 1.0),  # time since the previous step
        st.lists(
            st.tuples(st.integers(0, 4), st.integers(0, 4), st.booleans(), st.integers(0, 500)),
            max_size=4,
            unique_by=lambda row: row[0],
        ),
    ),
    max_size=40,
)


@given(steps=_STEPS, cuts=st.lists(st.integers(0, 40), max_size=6))
@settings(deadline=None)
def test_steps_recorded_together_or_one_by_one_give_the_same_summary(
    steps: list[tuple[float, list[tuple[int, int, bool, int]]]], cuts: list[int]
) -> None:
    timed: list[tuple[float, list[RequestOutput]]] = []
    now = 0.0
    for gap, rows in steps:
        now += gap
        timed.append((now, [out(f"r{i}", tokens, done=done, cached=cached) for i, tokens, done, cached in rows]))

    def collector() -> MetricsCollector:
        m = MetricsCollector(window_start=1.0, window_end=10.0)
        for i in range(5):
            m.on_arrival(f"r{i}", 100, 0.5 * i)
        return m

    one_by_one, together = collector(), collector()
    for t, outputs in timed:
        one_by_one.on_outputs(outputs, t)
    bounds = sorted({0, len(timed), *(min(c, len(timed)) for c in cuts)})
    for lo, hi in itertools.pairwise(bounds):
        together.on_steps(timed[lo:hi])
    end = now + 1.0
    assert together.summarize(end).model_dump_json() == one_by_one.summarize(end).model_dump_json()


def test_a_subnormal_decode_time_is_left_out_of_tpot_instead_of_dividing_by_zero() -> None:
    # Found by hypothesis: tokens at 0.0 and 5e-324 s give (5e-324 - 0.0) / 2 == 0.0 s a token, and tokens/s 1 / 0.
    m = MetricsCollector(window_start=0.0, window_end=10.0)
    m.on_arrival("r", 100, 0.0)
    m.on_outputs([out("r", 2)], 0.0)
    m.on_outputs([out("r", 1)], 5e-324)
    summary = m.summarize(1.0)
    assert summary.tpot_s.count == 0 and summary.tps_per_user.count == 0
    assert summary.ttft_s.count == 1
