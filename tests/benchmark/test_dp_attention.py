"""SGLang's DP attention: a scheduler and prefix cache per rank, requests routed as its controller routes them."""

from __future__ import annotations

import pytest

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.dp_attention import run_dp_attention
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import make_deployment, run_bench
from tokensched.executor import executor_package

TINY = {"target_tpm": 1_000_000, "duration_s": 60, "warmup_s": 20, "drain_s": 5, "kv_dtype": "fp8"}


def test_a_dp_rank_prices_its_own_batch_on_one_rank_and_holds_one_rank_of_kv() -> None:
    sim = executor_package("sim")
    pooled = sim.CostModel(make_deployment(BenchConfig(policy="sglang-tp8-dp", **TINY)))
    rank = pooled.one_dp_rank()
    assert pooled.num_kv_blocks(64) == 8 * rank.num_kv_blocks(64)
    shape = sim.BatchShape.from_counts(num_decode_requests=8, decode_context_tokens=8 * 50_000)
    # Pooled: 8 requests balanced one a rank; one rank's view: all 8 on this rank, so attention costs more.
    assert rank.step_time(shape) > pooled.step_time(shape)
    one = sim.BatchShape.from_counts(num_decode_requests=1, decode_context_tokens=50_000)
    assert rank.step_time(one) == pytest.approx(pooled.step_time(one))  # one request sits on one rank either way


def test_one_dp_rank_refuses_attention_tp() -> None:
    sim = executor_package("sim")
    with pytest.raises(ValueError, match="needs DP attention"):
        sim.CostModel(make_deployment(BenchConfig(policy="sglang-tp8", **TINY))).one_dp_rank()


def test_dp_profiles_carry_sglangs_per_rank_settings() -> None:
    for name, router in (("sglang-tp8-dp", "round_robin"), ("sglang-tp8-dp-lb", "least_load")):
        profile = PROFILES[name]
        assert profile.per_rank_schedulers and profile.dp_router == router and profile.tp == 8
        settings = profile.scheduler_settings(speculative=True)
        assert settings["max_batched_tokens"] == 16384 // 8 and settings["max_running"] == 48 // 8
    assert not PROFILES["sglang-tp8"].per_rank_schedulers


def test_run_bench_runs_a_dp_profile_as_eight_ranks_with_their_own_caches() -> None:
    config = BenchConfig(policy="sglang-tp8-dp", **TINY)
    result, trace = run_bench(config)
    assert "a pool and scheduler per rank, routed round_robin" in result.run.deployment
    assert result.metrics.num_gpus == 8 and result.metrics.num_requests > 0 and trace.sessions
    pooled = executor_package("sim").CostModel(make_deployment(config))
    assert result.run.kv_capacity_tokens == pooled.num_kv_blocks(64) * 64
    again, _ = run_dp_attention(config)
    assert again.deterministic_json() == result.deterministic_json()
    # Round robin sends a session's turns to ranks that have not seen it: fewer prefix hits than one shared cache.
    shared, _ = run_bench(config.model_copy(update={"policy": "sglang-tp8"}))
    assert result.metrics.prefix_cache_hit_rate < shared.metrics.prefix_cache_hit_rate


def test_run_dp_attention_refuses_a_profile_without_per_rank_schedulers() -> None:
    with pytest.raises(ValueError, match="does not run a scheduler per DP-attention rank"):
        run_dp_attention(BenchConfig(policy="sglang-tp8", **TINY))
