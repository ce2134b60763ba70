"""The coding-agent benchmark: one workload, several scheduling policies, one simulated deployment.

:func:`run_bench` builds a :class:`~tokensched.scheduler.Scheduler` with a
policy profile, a ``SimExecutor`` for the deployment and a closed-loop
:class:`~tokensched.workloads.SessionWorkload`, drives them with the
:class:`~tokensched.engine.Engine` over simulated time and returns a
:class:`BenchResult`. :mod:`tokensched.benchrun` sweeps load levels and
profiles and reports.

Profiles set the policy *and* the knobs that come with a serving stack, so the
baselines are configured like their projects' defaults on this hardware (the
sources are in each profile's description). Every profile sees the same
sessions (one seed) on the same cost model.

Timeline of one run: sessions arrive from t=0; latencies and offered load are
measured for requests arriving in ``[warmup_s, duration_s)``; arrivals go on
for ``drain_s`` more so the last measured requests meet the same load, and the
run stops there (requests still without a first token are counted as censored).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.config import SchedulerConfig
from tokensched.engine import Engine
from tokensched.errors import CapacityError, InvalidRequest, QueueFull, TokenschedError
from tokensched.executor import executor_package
from tokensched.metrics import MaybeNaN, MetricsCollector, MetricsSummary
from tokensched.plan import FinishReason
from tokensched.policies import FCFSPolicy, Policy, PrefixAwarePolicy, SLOPolicy
from tokensched.scheduler import Scheduler
from tokensched.workloads import Arrivals, CodingAgentConfig, CodingAgentSource, SessionWorkload, Trace, TraceSource

EOS_TOKEN_ID = 0  # the simulator's EOS; the scheduler stops on it, never knowing answer lengths up front
_PROGRESS_EVERY = 512  # steps between progress callbacks


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


class BenchConfig(BaseModel):
    """One run: deployment, policy profile, load level and how long to simulate."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(default="kimi-k2.5", description="model preset of the simulator")
    gpu: str = Field(default="b200", description="GPU preset of the simulator")
    tp: int = Field(default=4, ge=1, description="tensor-parallel GPUs (per-GPU figures divide by this)")
    kv_dtype: str | None = Field(default=None, description="KV cache dtype override of the simulator (e.g. fp8)")
    block_size: int = Field(default=64, ge=1, description="KV block size (MLA kernels page by 64)")
    policy: str = "vllm"
    target_tpm: float | None = Field(default=2_500_000.0, gt=0.0, description="offered input tokens per minute")
    concurrency: int | None = Field(default=None, ge=1, description="sessions kept running (instead of a TPM)")
    duration_s: float = Field(default=600.0, gt=0.0, description="end of the measured arrivals")
    warmup_s: float = Field(default=120.0, ge=0.0, description="arrivals before this are not measured")
    drain_s: float = Field(default=60.0, ge=0.0, description="load goes on this long after duration_s, unmeasured")
    ttft_slo_s: float = Field(default=10.0, gt=0.0, description="TTFT target: SLO policy deadline and attainment")
    seed: int = 0
    sample_interval_s: float = Field(default=1.0, gt=0.0, description="queue/KV sampling period")
    num_speculative_tokens: int = Field(default=0, ge=0, le=16)
    workload: CodingAgentConfig = CodingAgentConfig()

    @model_validator(mode="after")
    def _consistent(self) -> BenchConfig:
        if (self.target_tpm is None) == (self.concurrency is None):
            raise ValueError("set exactly one of target_tpm and concurrency")
        if self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s={self.warmup_s} leaves nothing of duration_s={self.duration_s} to measure")
        if self.policy not in PROFILES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(PROFILES)}")
        return self

    @property
    def arrivals(self) -> Arrivals:
        return Arrivals(target_tpm=self.target_tpm, concurrency=self.concurrency)


class RunInfo(BaseModel):
    """What happened in the run besides the metrics; ``wall_s`` and ``speedup`` vary between runs."""

    model_config = ConfigDict(frozen=True)

    deployment: str
    num_kv_blocks: int
    kv_capacity_tokens: int
    max_context_tokens: int
    sim_time_s: float
    num_steps: int
    sessions_started: int
    sessions_completed: int
    requests_released: int
    requests_rejected: int  # refused at submit (could never fit the KV pool)
    requests_unfinished: int  # still running or waiting when the run stopped
    wall_s: float
    cpu_s: float  # this process's CPU time: the wall time on an idle core
    speedup: MaybeNaN  # simulated seconds per wall-clock second


class BenchResult(BaseModel):
    """One run's configuration, metrics and run information."""

    model_config = ConfigDict(frozen=True)

    config: BenchConfig
    profile: str
    metrics: MetricsSummary
    run: RunInfo

    def deterministic_json(self) -> str:
        """The result without wall-clock figures: identical for identical configurations."""
        return self.model_dump_json(exclude={"run": {"wall_s", "cpu_s", "speedup"}})


def _simulator() -> Any:
    """The simulator's package (its ``Deployment`` and ``CostModel`` besides the executor), via its entry point."""
    return executor_package("sim")


def make_deployment(config: BenchConfig) -> Any:
    """The simulator's ``Deployment`` for ``config``; raises ValueError for unknown presets or dtypes."""
    sim = _simulator()
    return sim.Deployment(model=config.model, gpu=config.gpu, tp=config.tp, kv_dtype=config.kv_dtype)


def run_bench(
    config: BenchConfig,
    *,
    trace: Trace | None = None,
    progress: Callable[[float], None] | None = None,
) -> tuple[BenchResult, Trace]:
    """Simulate one load level under one profile; returns the result and the trace that replays it.

    With ``trace`` the sessions (and, for rate traces, their start times) come
    from it instead of the generator; the arrivals of ``config`` are ignored.
    ``progress`` is called now and then with the fraction of simulated time done.
    """
    sim = _simulator()
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    profile = PROFILES[config.policy]
    deployment = make_deployment(config)
    stop = config.duration_s + config.drain_s
    probe = sim.CostModel(deployment)
    capacity = probe.num_kv_blocks(config.block_size) * config.block_size
    # A context the KV pool cannot hold would be refused by any server: such a turn ends its session.
    workload_config = config.workload.model_copy(
        update={"max_context_tokens": min(config.workload.max_context_tokens, capacity)}
    )
    if trace is None:
        source: Any = CodingAgentSource(workload_config, config.arrivals, stop, config.seed)
    else:
        header = trace.header.model_copy(
            update={"duration_s": stop, "max_context_tokens": min(trace.header.max_context_tokens, capacity)}
        )
        source = TraceSource(trace.model_copy(update={"header": header}))
    workload = SessionWorkload(source, ttft_deadline_s=config.ttft_slo_s, eos_token_id=EOS_TOKEN_ID)
    executor = sim.SimExecutor(
        deployment,
        block_size=config.block_size,
        output_lengths=workload.planned_output_tokens,
        eos_token_id=EOS_TOKEN_ID,
        num_speculative_tokens=config.num_speculative_tokens,
        seed=config.seed,
    )
    settings: dict[str, Any] = {
        "num_blocks": executor.num_kv_blocks,
        "block_size": config.block_size,
        "num_speculative_tokens": config.num_speculative_tokens,
        **profile.settings,
    }
    scheduler = Scheduler(
        SchedulerConfig.model_validate(settings), policy=profile.make_policy(config), clock=executor.now
    )
    engine = Engine(scheduler, executor)
    metrics = MetricsCollector(
        num_gpus=config.tp,
        window_start=config.warmup_s,
        window_end=config.duration_s,
        sample_interval_s=config.sample_interval_s,
        ttft_slo_s=config.ttft_slo_s,
    )
    rejected = _drive(engine, workload, metrics, stop, progress)
    end = executor.now()
    metrics.on_stats(end, scheduler.stats())
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    counts = workload.counts
    run = RunInfo(
        deployment=f"{deployment.model.name} on {config.tp}x {deployment.gpu.name}",
        num_kv_blocks=executor.num_kv_blocks,
        kv_capacity_tokens=executor.num_kv_blocks * config.block_size,
        max_context_tokens=workload.header.max_context_tokens,
        sim_time_s=end,
        num_steps=scheduler.stats().num_steps,
        sessions_started=counts.sessions_started,
        sessions_completed=counts.sessions_completed,
        requests_released=counts.requests_released,
        requests_rejected=rejected,
        requests_unfinished=len(scheduler.live),
        wall_s=wall,
        cpu_s=cpu,
        speedup=end / wall if wall > 0 else math.inf,
    )
    result = BenchResult(config=config, profile=profile.description, metrics=metrics.summarize(end), run=run)
    return result, workload.trace()


def _drive(
    engine: Engine,
    workload: SessionWorkload,
    metrics: MetricsCollector,
    stop: float,
    progress: Callable[[float], None] | None,
) -> int:
    """The closed loop: submit due turns, step the engine, feed answers back; returns rejected requests."""
    scheduler, executor = engine.scheduler, engine.executor
    answers: dict[str, list[int]] = {}
    rejected = 0
    steps = 0
    while True:
        now = executor.now()
        if now >= stop:
            return rejected
        for spec in workload.release(now):
            try:
                scheduler.submit(spec)
            except (CapacityError, InvalidRequest, QueueFull):
                rejected += 1
                workload.on_finished(spec.request_id, (), now, FinishReason.ERROR)
                continue
            metrics.on_arrival(spec.request_id, len(spec.prompt_token_ids), spec.arrival_time or now)
            answers[spec.request_id] = []
        if now >= metrics.next_sample_time:
            metrics.on_stats(now, scheduler.stats())
        if not scheduler.has_work:
            wake = workload.next_release_time()
            if wake is None:
                executor.wait_until(stop)  # idle to the end: simulated time still passes
                return rejected
            executor.wait_until(min(wake, max(metrics.next_sample_time, now), stop))
            continue
        outputs = engine.step()
        t = executor.now()
        if t == now and not outputs and engine.num_in_flight == 0:
            raise TokenschedError(f"t={now:.3f}s: the scheduler has unfinished requests but planned no step")
        metrics.on_outputs(outputs, t)
        for output in outputs:
            if output.new_token_ids:
                answers[output.request_id].extend(output.new_token_ids)
            if output.finish_reason is not None:
                workload.on_finished(output.request_id, answers.pop(output.request_id), t, output.finish_reason)
        steps += 1
        if progress is not None and steps % _PROGRESS_EVERY == 0:
            progress(min(t / stop, 1.0))
