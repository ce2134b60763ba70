"""Engine profiles carry the settings their engine applies under speculation, and only then."""

from __future__ import annotations

from tokensched.benchmark.profiles import PROFILES
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
