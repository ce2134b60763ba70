"""Policy profiles: a scheduling policy plus the scheduler settings of the serving stack it stands for.

Profiles set the policy *and* the knobs that come with a serving stack, so the
baselines are configured like their projects' defaults on this hardware (the
sources are in each profile's description).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from tokensched.policies import FCFSPolicy, Policy, PrefixAwarePolicy, SLOPolicy

if TYPE_CHECKING:
    from tokensched.benchmark.config import BenchConfig


@attrs.frozen(slots=True)
class PolicyProfile:
    """A named policy with the scheduler settings of the stack it stands for."""

    name: str
    description: str
    make_policy: Callable[[BenchConfig], Policy]
    settings: dict[str, Any] = attrs.field(factory=dict)  # SchedulerConfig overrides


PROFILES: dict[str, PolicyProfile] = {
    profile.name: profile
    for profile in (
        PolicyProfile(
            "vllm",
            "vLLM V1 defaults: FCFS, chunked prefill with max_num_batched_tokens=8192 and max_num_seqs=1024 "
            "(EngineArgs defaults for >=70 GiB GPUs, online serving), block-hash prefix cache, recompute preemption",
            lambda _: FCFSPolicy(),
            {"max_batched_tokens": 8192, "max_running": 1024},
        ),
        PolicyProfile(
            "sglang",
            "SGLang: longest-prefix-match scheduling over its radix cache (schedule_policy=lpm), "
            "chunked_prefill_size=16384 (ServerArgs default for >=160 GB GPUs), recompute on retraction",
            lambda _: PrefixAwarePolicy(),
            {"max_batched_tokens": 16384, "max_running": 1024},
        ),
        PolicyProfile(
            "prefix-aware",
            "tokensched: longest cached prefix first (FCFS among equals) with tokensched's default budget "
            "(8192 tokens per step)",
            lambda _: PrefixAwarePolicy(),
        ),
        PolicyProfile(
            "retain",
            "tokensched: longest cached prefix first, and a finished turn's KV kept 10 s for its session's next "
            "turn (session_kv_retention_s=10); default budget (8192 tokens per step)",
            lambda _: PrefixAwarePolicy(),
            {"session_kv_retention_s": 10.0},
        ),
        PolicyProfile(
            "slo",
            "tokensched: earliest TTFT deadline first (arrival + ttft_slo_s); requests whose TTFT is met "
            "are preempted first; tokensched's default budget (8192 tokens per step)",
            lambda config: SLOPolicy(default_ttft_deadline=config.ttft_slo_s),
        ),
    )
}
