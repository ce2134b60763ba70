"""The Prometheus exposition: well-formed text, cumulative buckets, gauges from the stats snapshot."""

from __future__ import annotations

import re

import pytest

from tests.server.conftest import parse_samples
from tokensched.server.metrics import Histogram, RequestTiming, ServerMetrics, one_two_five_buckets
from tokensched.server.runner import SpecDecodeCounters
from tokensched.stats import SchedulerStats

SAMPLE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_]+="[^"]*"(,[a-zA-Z_]+="[^"]*")*\})? -?[0-9.e+-]+$|^.* \+?Inf$'
)


def parse(text: str) -> dict[str, float]:
    """Sample lines as name{labels} -> value; fails on anything that is not a comment or a sample."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE.match(line), f"not a Prometheus sample: {line!r}"
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def stats(**overrides: int) -> SchedulerStats:
    fields = dict(
        num_running=3, num_waiting=2, num_steps_in_flight=1, num_free_blocks=75, num_pending_blocks=0,
        num_total_blocks=100, prefix_hit_tokens=30, prefix_query_tokens=120, num_preemptions=4, num_finished=9,
        num_aborted=1, num_failed_steps=0, num_steps=50,
    )  # fmt: skip
    return SchedulerStats(**(fields | overrides))


def test_histogram_buckets_are_cumulative_and_end_at_inf() -> None:
    h = Histogram("x_seconds", "help", (0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        h.observe(value)
    h.observe(0.5, times=2)
    samples = parse("\n".join(h.render()))
    assert samples['x_seconds_bucket{le="0.1"}'] == 2  # le is inclusive
    assert samples['x_seconds_bucket{le="1"}'] == 5
    assert samples['x_seconds_bucket{le="+Inf"}'] == 6
    assert samples["x_seconds_count"] == 6
    assert samples["x_seconds_sum"] == pytest.approx(0.05 + 0.1 + 0.5 * 3 + 3.0)


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        Histogram("x", "help", (1.0, 0.5))


def test_the_exposition_reports_scheduler_state_and_latencies() -> None:
    metrics = ServerMetrics()
    metrics.on_first_token(0.2, prompt_tokens=7)
    metrics.on_tokens(0.0, 1, first=True)
    metrics.on_tokens(0.03, 3)  # three tokens 30 ms after the first: 10 ms each
    metrics.on_finished(RequestTiming("length", 0.5, 7, 4, max_tokens=4, scheduled=0.05, first_token=0.2))
    metrics.on_finished(RequestTiming("abort", 0.1, 5, 0, max_tokens=16))
    metrics.on_rejected("queue_full")
    samples = parse_samples(metrics.render(stats()))
    assert samples["tokensched:num_requests_running"] == 3
    assert samples["tokensched:num_requests_waiting"] == 2
    assert samples["tokensched:kv_cache_usage_perc"] == pytest.approx(0.25)
    assert samples["tokensched:prefix_cache_hit_rate"] == pytest.approx(0.25)
    assert samples["tokensched:prefix_cache_hits_total"] == 30
    assert samples["tokensched:num_preemptions_total"] == 4
    assert samples["tokensched:time_to_first_token_seconds_count"] == 1
    assert samples["tokensched:inter_token_latency_seconds_count"] == 3
    assert samples['tokensched:inter_token_latency_seconds_bucket{le="0.01"}'] == 3
    assert samples["tokensched:e2e_request_latency_seconds_count"] == 2
    assert samples["tokensched:request_queue_time_seconds_sum"] == pytest.approx(0.05)
    assert samples["tokensched:request_prefill_time_seconds_sum"] == pytest.approx(0.15)
    assert samples["tokensched:request_decode_time_seconds_sum"] == pytest.approx(0.3)
    assert samples["tokensched:request_queue_time_seconds_count"] == 1  # the aborted one was never scheduled
    assert samples['tokensched:request_success_total{finished_reason="length"}'] == 1
    assert samples['tokensched:request_success_total{finished_reason="abort"}'] == 1
    assert samples['tokensched:request_rejected_total{reason="queue_full"}'] == 1
    assert samples['tokensched:request_params_max_tokens_bucket{le="5"}'] == 1
    assert samples["tokensched:prompt_tokens_total"] == 7  # counted at the first token: the aborted one had none
    assert samples["tokensched:generation_tokens_total"] == 4


def test_tokens_are_counted_as_they_are_produced_not_when_the_request_ends() -> None:
    metrics = ServerMetrics()
    metrics.on_first_token(0.1, prompt_tokens=100)
    metrics.on_tokens(0.0, 1, first=True)
    metrics.on_tokens(0.02, 2)
    samples = parse_samples(metrics.render(None))
    assert samples["tokensched:prompt_tokens_total"] == 100
    assert samples["tokensched:generation_tokens_total"] == 3
    assert samples["tokensched:e2e_request_latency_seconds_count"] == 0


def test_the_vllm_prefix_renames_shared_families_and_keeps_tokenscheds_own() -> None:
    text = ServerMetrics(model_name="m", prefix="vllm").render(stats())
    assert 'vllm:num_requests_running{model_name="m",engine="0"} 3' in text.splitlines()
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in text
    assert 'tokensched:num_steps_in_flight{model_name="m",engine="0"} 1' in text.splitlines()
    assert "tokensched:num_requests_running" not in text


def test_buckets_are_vllms() -> None:
    assert one_two_five_buckets(100) == (1, 2, 5, 10, 20, 50, 100)
    text = ServerMetrics(max_model_len=1000).render(None)
    bounds = [
        line.split('le="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("tokensched:request_prompt_tokens_bucket")
    ]
    assert bounds == ["1", "2", "5", "10", "20", "50", "100", "200", "500", "1000", "+Inf"]


def test_every_family_is_declared_once_with_help_and_type() -> None:
    text = ServerMetrics().render(stats())
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(types) == len(set(types)) == len(helps)
    assert text.endswith("\n")
    parse(text)  # every other line is a well-formed sample


def test_without_a_snapshot_only_server_side_families_are_reported() -> None:
    samples = parse_samples(ServerMetrics().render(None))
    assert "tokensched:num_requests_running" not in samples
    assert samples["tokensched:time_to_first_token_seconds_count"] == 0


def test_spec_decode_counters_count_drafts_and_accepted_tokens_per_position() -> None:
    counters = SpecDecodeCounters()
    # three requests: 2 drafts with 1 accepted (+ bonus); none drafted; 3 drafts all accepted (+ bonus)
    counters.record([(5, 6), (), (7, 8, 9)], [[5, 11], [4], [7, 8, 9, 12]])
    assert (counters.num_drafts, counters.num_draft_tokens, counters.num_accepted_tokens) == (2, 5, 4)
    assert counters.accepted_per_position == [2, 1, 1]
    samples = parse_samples(ServerMetrics(prefix="vllm").render(stats(), counters))
    assert samples["vllm:spec_decode_num_drafts_total"] == 2
    assert samples["vllm:spec_decode_num_draft_tokens_total"] == 5
    assert samples["vllm:spec_decode_num_accepted_tokens_total"] == 4
    assert samples['vllm:spec_decode_num_accepted_tokens_per_pos_total{position="0"}'] == 2


def test_spec_decode_families_appear_only_once_drafts_are_used() -> None:
    assert "spec_decode" not in ServerMetrics().render(stats(), SpecDecodeCounters())
    assert "spec_decode" not in ServerMetrics().render(stats(), None)
