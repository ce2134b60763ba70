"""The coding-agent benchmark: one workload, several scheduling policies, one simulated deployment.

:func:`run_bench` builds a :class:`~tokensched.scheduler.Scheduler` with a
policy profile, a ``SimExecutor`` for the deployment and a
:class:`~tokensched.benchmark.workloads.SessionWorkload`, drives them with the
:class:`~tokensched.engine.Engine` over simulated time and returns a
:class:`BenchResult`. :mod:`tokensched.benchmark.sweep` sweeps load levels and
profiles and reports.

Every profile (:mod:`tokensched.benchmark.profiles`) sees the same sessions
(one seed) on the same cost model.

Timeline of one run: sessions arrive from t=0; latencies and offered load are
measured for requests arriving in ``[warmup_s, duration_s)``; arrivals go on
for ``drain_s`` more so the last measured requests meet the same load, and the
run stops there (requests still without a first token are counted as censored).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.host_tier import host_tier_settings
from tokensched.benchmark.metrics import MaybeNaN, MetricsCollector, MetricsSummary
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.workloads import (
    CodingAgentSource,
    SessionWorkload,
    Trace,
    TraceSource,
    session_statistics,
)
from tokensched.config import SchedulerConfig
from tokensched.engine import Engine
from tokensched.errors import CapacityError, InvalidRequest, QueueFull, TokenschedError
from tokensched.executor import executor_package
from tokensched.plan import FinishReason, OutputBatch, RequestOutput
from tokensched.run_outputs import PlainStepOutputs
from tokensched.scheduler import Scheduler

EOS_TOKEN_ID = 0  # the simulator's EOS; the scheduler stops on it, never knowing answer lengths up front
_PROGRESS_EVERY = 512  # steps between progress callbacks


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
    rate_scale: float  # session rate / nominal Poisson rate, so the window offers the label (1 without rescaling)
    stand_in_answers: int  # open-loop turns sent before their previous answer was in
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
    """The simulator's ``Deployment`` for ``config`` and its profile's engine and shape.

    Raises ValueError for unknown presets or dtypes, and the simulator's
    ``DeploymentError`` (a ValueError) when the weights do not fit.
    """
    sim = _simulator()
    profile = PROFILES[config.policy]
    deployment = sim.Deployment(
        model=config.model,
        gpu=config.gpu,
        tp=config.num_gpus,
        kv_dtype=config.kv_dtype,
        engine=profile.engine,
        attention=profile.attention,
        moe=profile.moe,
        num_speculative_tokens=config.num_speculative_tokens,
        memory_utilization=profile.memory_fraction,
    )
    sim.CostModel(deployment)  # sizes memory: a deployment whose weights do not fit fails here
    return deployment


class KVCapacity(BaseModel):
    """What a profile's KV cache holds on its deployment (printed before a sweep runs)."""

    model_config = ConfigDict(frozen=True)

    profile: str
    shape: str
    num_gpus: int
    block_size: int
    num_blocks: int
    tokens: int
    max_request_tokens: int
    median_prompt_tokens: int
    sessions_that_fit: float  # tokens / median prompt: sessions of median length held at once
    memory: str  # the simulator's per-rank memory breakdown, one line


def kv_capacity(config: BenchConfig) -> KVCapacity:
    """The KV capacity of ``config``'s profile and deployment (sizes memory; runs nothing)."""
    sim = _simulator()
    cost = sim.CostModel(make_deployment(config))
    blocks = cost.num_kv_blocks(config.block_size)
    median = session_statistics(config.workload, config.seed).median_prompt_tokens
    return KVCapacity(
        profile=config.policy,
        shape=PROFILES[config.policy].shape(config.tp),
        num_gpus=config.num_gpus,
        block_size=config.block_size,
        num_blocks=blocks,
        tokens=blocks * config.block_size,
        max_request_tokens=cost.max_request_tokens(config.block_size),
        median_prompt_tokens=round(median),
        sessions_that_fit=blocks * config.block_size / median,
        memory=cost.memory_breakdown().format(),
    )


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
    profile = PROFILES[config.policy]
    if profile.per_rank_schedulers:  # SGLang's DP attention: a scheduler and prefix cache per rank
        from tokensched.benchmark.dp_attention import run_dp_attention

        return run_dp_attention(config, trace=trace, progress=progress)
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    built = build_simulation(config, trace=trace)
    deployment, workload, executor, scheduler = built.deployment, built.workload, built.executor, built.scheduler
    metrics, stop = built.metrics, built.stop
    rejected = drive(Engine(scheduler, executor), workload, metrics, stop, progress)
    end = executor.now()
    metrics.on_stats(end, scheduler.stats())
    return bench_result(
        config,
        metrics,
        workload,
        deployment=f"{deployment.model.name} on {config.num_gpus}x {deployment.gpu.name}, {profile.shape(config.tp)}",
        num_kv_blocks=executor.num_kv_blocks,
        sim_time_s=end,
        num_steps=scheduler.stats().num_steps,
        rejected=rejected,
        unfinished=len(scheduler.live),
        started=(wall_start, cpu_start),
    )


def bench_metrics(config: BenchConfig, num_gpus: int) -> MetricsCollector:
    """The collector of one run of ``config``: its measuring window, sampling interval and TTFT target."""
    return MetricsCollector(
        num_gpus=num_gpus,
        window_start=config.warmup_s,
        window_end=config.duration_s,
        sample_interval_s=config.sample_interval_s,
        ttft_slo_s=config.ttft_slo_s,
    )


def bench_result(
    config: BenchConfig,
    metrics: MetricsCollector,
    workload: SessionWorkload,
    *,
    deployment: str,
    num_kv_blocks: int,
    sim_time_s: float,
    num_steps: int,
    rejected: int,
    unfinished: int,
    started: tuple[float, float],
) -> tuple[BenchResult, Trace]:
    """The result of a finished run (its wall and CPU time counted from ``started``) and the trace that replays it."""
    wall, cpu = time.perf_counter() - started[0], time.process_time() - started[1]
    counts = workload.counts
    run = RunInfo(
        deployment=deployment,
        num_kv_blocks=num_kv_blocks,
        kv_capacity_tokens=num_kv_blocks * config.block_size,
        max_context_tokens=workload.header.max_context_tokens,
        sim_time_s=sim_time_s,
        num_steps=num_steps,
        sessions_started=counts.sessions_started,
        sessions_completed=counts.sessions_completed,
        requests_released=counts.requests_released,
        requests_rejected=rejected,
        requests_unfinished=unfinished,
        rate_scale=workload.header.rate_scale,
        stand_in_answers=counts.stand_in_answers,
        wall_s=wall,
        cpu_s=cpu,
        speedup=sim_time_s / wall if wall > 0 else math.inf,
    )
    summary = metrics.summarize(sim_time_s)
    return BenchResult(
        config=config, profile=PROFILES[config.policy].description, metrics=summary, run=run
    ), workload.trace()


class Simulation(NamedTuple):
    """One load level's pieces, built but not yet run: what :func:`run_bench` and its variants drive."""

    deployment: Any
    workload: SessionWorkload
    executor: Any
    scheduler: Scheduler
    metrics: MetricsCollector
    stop: float


def workload_source(config: BenchConfig, capacity: int, stop: float, trace: Trace | None) -> Any:
    """The bench's sessions (or ``trace``'s) until ``stop``, each context capped at ``capacity`` tokens.

    A context the KV pool (or the one rank a request lives on) cannot hold
    would be refused by any server: such a turn ends its session.
    """
    if trace is None:
        workload = config.workload.model_copy(
            update={"max_context_tokens": min(config.workload.max_context_tokens, capacity)}
        )
        window = (config.warmup_s, config.duration_s)
        return CodingAgentSource(workload, config.arrivals, stop, config.seed, window=window)
    header = trace.header.model_copy(
        update={"duration_s": stop, "max_context_tokens": min(trace.header.max_context_tokens, capacity)}
    )
    return TraceSource(trace.model_copy(update={"header": header}))


def sim_engine(
    config: BenchConfig,
    deployment: Any,
    workload: SessionWorkload,
    *,
    seed: int,
    num_kv_blocks: int | None = None,
    host_tier: bool = True,
    overrides: Mapping[str, Any] | None = None,
) -> tuple[Any, Scheduler]:
    """The simulated GPU and the profile's scheduler over it: what one bench replica (or DP rank) is made of.

    ``num_kv_blocks`` overrides the pool the deployment's memory gives (a DP
    rank holds its own share); ``host_tier`` adds the config's host KV tier;
    ``overrides`` replace scheduler settings the profile chose.
    """
    sim = _simulator()
    profile = PROFILES[config.policy]
    executor_options: dict[str, Any] = {"host_link": config.host_link} if host_tier else {}
    if num_kv_blocks is not None:
        executor_options["num_kv_blocks"] = num_kv_blocks
    executor = sim.SimExecutor(
        deployment,
        block_size=config.block_size,
        output_lengths=workload.planned_output_tokens,
        eos_token_id=EOS_TOKEN_ID,
        mean_accepted_length=config.spec_accept_length if config.num_speculative_tokens else None,
        seed=seed,
        **executor_options,
    )
    settings: dict[str, Any] = {
        "num_blocks": executor.num_kv_blocks,
        "block_size": config.block_size,
        "num_speculative_tokens": config.num_speculative_tokens,
        **profile.scheduler_settings(speculative=config.num_speculative_tokens > 0),
        **(host_tier_settings(config, executor) if host_tier else {}),
        **(overrides or {}),
    }
    scheduler = Scheduler(
        SchedulerConfig.model_validate(settings),
        policy=profile.make_policy(config),
        clock=executor.now,
        load_cost=executor,
    )
    return executor, scheduler


def build_simulation(
    config: BenchConfig, *, trace: Trace | None = None, overrides: Mapping[str, Any] | None = None
) -> Simulation:
    """The deployment, workload, simulated executor, scheduler and metrics of one run of ``config``.

    ``overrides`` replace scheduler settings the profile chose (the eviction
    comparison changes only ``prefix_eviction``), so every variant of the
    benchmark runs the same setup as :func:`run_bench`.
    """
    sim = _simulator()
    deployment = make_deployment(config)
    stop = config.duration_s + config.drain_s
    probe = sim.CostModel(deployment)
    capacity = min(
        probe.max_request_tokens(config.block_size), probe.num_kv_blocks(config.block_size) * config.block_size
    )
    source = workload_source(config, capacity, stop, trace)
    workload = SessionWorkload(source, ttft_deadline_s=config.ttft_slo_s, eos_token_id=EOS_TOKEN_ID)
    executor, scheduler = sim_engine(config, deployment, workload, seed=config.seed, overrides=overrides)
    return Simulation(deployment, workload, executor, scheduler, bench_metrics(config, config.num_gpus), stop)


def drive(
    engine: Engine,
    workload: SessionWorkload,
    metrics: MetricsCollector,
    stop: float,
    progress: Callable[[float], None] | None = None,
) -> int:
    """Drive one scheduler + engine from a workload until ``stop``; returns the requests refused at submit.

    Submits the turns the workload releases, steps the engine, records every
    output in ``metrics`` and feeds finished answers back to the workload. It
    knows nothing of profiles or deployments, so a caller can build its own
    engine (another executor, several replicas behind a router) and reuse it.
    """
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
        ran = engine.step_run(min(workload.next_event_time(), metrics.next_sample_time, stop))
        if ran is not None:  # several decode steps at once, the same as single steps (tokensched.decode_run)
            record_steps(ran, metrics, workload, answers)
            before, steps = steps, steps + len(ran)
            if progress is not None and steps // _PROGRESS_EVERY != before // _PROGRESS_EVERY:
                progress(min(executor.now() / stop, 1.0))
            continue
        outputs = engine.step()
        t = executor.now()
        if t == now and not outputs and engine.num_in_flight == 0:
            raise TokenschedError(f"t={now:.3f}s: the scheduler has unfinished requests but planned no step")
        record_steps(((t, outputs),), metrics, workload, answers)
        steps += 1
        if progress is not None and steps % _PROGRESS_EVERY == 0:
            progress(min(t / stop, 1.0))


def record_steps(
    steps: Sequence[tuple[float, Sequence[RequestOutput]]],
    metrics: MetricsCollector,
    workload: SessionWorkload,
    answers: dict[str, list[int]],
) -> None:
    """Steps' outputs, each delivered at its time: into the metrics, the answers, and finished turns to the workload."""
    metrics.on_steps(steps)
    for t, outputs in steps:
        if type(outputs) is PlainStepOutputs:  # a run's step of appends: its columns, no finish among them
            ids = outputs.request_ids
            for i, row in zip(outputs.rows, outputs.tokens, strict=True):
                answers[ids[i]].extend(row)
            continue
        if type(outputs) is OutputBatch:
            plain = outputs.plain_columns()
            if plain is not None:  # a single step of appends: its columns, no finish or event among them
                for request_id, row in zip(plain[0], plain[1], strict=True):
                    if row:
                        answers[request_id].extend(row)
                continue
        for output in outputs:
            if output.new_token_ids:
                answers[output.request_id].extend(output.new_token_ids)
            if output.finish_reason is not None:
                workload.on_finished(output.request_id, answers.pop(output.request_id), t, output.finish_reason)
