"""Engine profiles carry the settings their engine applies under speculation, and only then."""

from __future__ import annotations

import pytest

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import make_deployment
from tokensched.config import SchedulerConfig


def test_sglang_with_eagle_runs_at_most_48_requests_without_the_overlap_scheduler() -> None:
    """SGLang's ServerArgs._handle_speculative_decoding: max_running_requests=48, overlap scheduler off."""
    for name in ("sglang", "sglang-tp8"):
        profile = PROFILES[name]
        eagle = profile.scheduler_settings(speculative=True)
        assert eagle["max_running"] == 48 and eagle["max_steps_in_flight"] == 1
        plain = profile.scheduler_settings(speculative=False)
        assert plain["max_running"] == 1024 and "max_steps_in_flight" not in plain
        SchedulerConfig.model_validate({"num_blocks": 10, **eagle})  # valid scheduler settings


def test_other_profiles_do_not_change_under_speculation() -> None:
    for name in ("trtllm", "vllm", "prefix-aware", "retain", "slo", "trtllm-no-reuse"):
        profile = PROFILES[name]
        assert profile.scheduler_settings(speculative=True) == profile.scheduler_settings(speculative=False)


def test_the_no_reuse_sensitivity_profile_differs_from_trtllm_only_in_prefix_caching() -> None:
    base, variant = PROFILES["trtllm"], PROFILES["trtllm-no-reuse"]
    assert variant.settings == {**base.settings, "enable_prefix_caching": False}
    assert (variant.engine, variant.tp) == (base.engine, base.tp)


def test_the_latency_profile_takes_three_quarters_of_free_memory_for_kv() -> None:
    """NVIDIA's B200 TP4 configs for DeepSeek-R1-class models set free_gpu_memory_fraction=0.75 (default 0.9)."""
    from tokensched.benchmark.config import BenchConfig
    from tokensched.benchmark.run import kv_capacity, make_deployment

    latency = make_deployment(BenchConfig(policy="trtllm-latency"))
    assert latency.memory_utilization == 0.75 and latency.engine == "trtllm"
    assert make_deployment(BenchConfig(policy="trtllm")).memory_utilization is None
    small, large = kv_capacity(BenchConfig(policy="trtllm-latency")), kv_capacity(BenchConfig(policy="trtllm"))
    assert 0.75 / 0.9 - 0.05 < small.tokens / large.tokens < 0.75 / 0.9 + 0.05
    assert PROFILES["trtllm-latency"].settings["max_batched_tokens"] == 8320


def test_sglang_at_tp4_is_refused_before_a_run_and_tp8_is_not() -> None:
    """SGLang's default fraction for the multimodal Kimi-K2.5 leaves TP4 no KV cache; the published run used TP8."""
    with pytest.raises(ValueError, match=r"sglang, static_fraction 0\.768\).*3\.6 GB per rank short"):
        make_deployment(BenchConfig(policy="sglang"))
    deployment = make_deployment(BenchConfig(policy="sglang-tp8"))
    assert deployment.tp == 8 and deployment.engine == "sglang"
