"""The bench's host tier: sizing from GB, the crossing load, and one short run where the tier pays off."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.host_tier import crossing, host_kv_blocks
from tokensched.benchmark.run import run_bench


def test_host_capacity_in_blocks() -> None:
    assert host_kv_blocks(BenchConfig(), 2e6) == 0
    assert host_kv_blocks(BenchConfig(host_kv_gb=1.0), 2e6) == 500
    with pytest.raises(ValidationError):
        BenchConfig(host_kv_gb=-1.0)
    with pytest.raises(ValidationError):
        BenchConfig(host_link="usb")  # type: ignore[arg-type]


def test_crossing_interpolates_between_levels() -> None:
    assert crossing([1.0, 2.0, 3.0], [0.2, 0.6, 1.4], 1.0) == pytest.approx(2.5)
    assert crossing([1.0, 2.0], [1.5, 3.0], 1.0) == 1.0
    assert crossing([1.0, 2.0], [0.1, 0.2], 1.0) is None
    assert crossing([1.0, 2.0], [0.5, math.inf], 1.0) == 2.0  # an overloaded level (no p50) crosses at once
    with pytest.raises(ValueError, match="must increase"):
        crossing([2.0, 1.0], [0.1, 0.2], 1.0)


def test_a_host_tier_raises_the_hit_rate_past_the_device_cliff() -> None:
    """Short and small, but past the device-only knee: the same sessions hit more with a host tier."""
    common = {"policy": "vllm", "target_tpm": 1_000_000.0, "duration_s": 90.0, "warmup_s": 30.0, "drain_s": 10.0}
    device, _ = run_bench(BenchConfig.model_validate(common))
    tiered, _ = run_bench(BenchConfig.model_validate({**common, "host_kv_gb": 500.0}))
    assert tiered.metrics.prefix_cache_hit_rate > device.metrics.prefix_cache_hit_rate + 0.05
    assert tiered.metrics.ttft_s.p50 <= device.metrics.ttft_s.p50
