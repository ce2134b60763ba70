"""SGLang's DP attention: a scheduler and prefix cache per rank, requests routed as its controller routes them."""

from __future__ import annotations

from types import SimpleNamespace

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


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> float:
        return self.t

    def wait_until(self, t: float) -> None:
        self.t = max(self.t, t)


class _FakeEngine:
    """A rank with ``steps`` steps of work, each taking ``step_s`` on its own."""

    def __init__(self, steps: int, step_s: float) -> None:
        self.executor = _Clock()
        self.left, self.step_s, self.num_in_flight = steps, step_s, 0
        self.scheduler = self
        self.started: list[float] = []

    @property
    def has_work(self) -> bool:
        return self.left > 0

    def stats(self) -> SimpleNamespace:
        return SimpleNamespace(
            num_waiting=0,
            num_running=int(self.has_work),
            kv_usage=0.0,
            prefix_hit_tokens=0,
            prefix_query_tokens=0,
            num_preemptions=0,
        )

    def step(self) -> list[object]:
        self.started.append(self.executor.t)
        self.executor.t += self.step_s
        self.left -= 1
        return []


class _FakeRank:
    def __init__(self, engine: _FakeEngine) -> None:
        self.engine = self.scheduler = engine
        self.answers: dict[str, list[int]] = {}

    @property
    def now(self) -> float:
        return self.engine.executor.t


class _NoArrivals:
    def next_release_time(self) -> None:
        return None


def test_dp_ranks_step_in_lockstep_so_a_fast_rank_waits_for_the_slow_one() -> None:
    from tokensched.benchmark.dp_attention import _Chains, drive_lockstep
    from tokensched.benchmark.metrics import MetricsCollector

    slow, fast = _FakeEngine(steps=4, step_s=0.5), _FakeEngine(steps=6, step_s=0.01)
    ranks = [_FakeRank(e) for e in (slow, fast)]
    metrics = MetricsCollector(num_gpus=8, window_start=0.0, window_end=10.0, sample_interval_s=100.0)
    drive_lockstep(ranks, None, _NoArrivals(), metrics, _Chains(64), stop=10.0)  # type: ignore[arg-type]
    # While the slow rank works, every step of both starts at the same time: the end of the previous round.
    assert slow.started == [0.0, 0.5, 1.0, 1.5]
    assert fast.started == [0.0, 0.5, 1.0, 1.5, 2.0, 2.01]  # then the fast rank runs alone at its own pace
