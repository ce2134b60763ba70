"""R simulated replicas behind a router policy, on the coding-agent workload: a cluster in simulated time.

Each replica is what ``tokensched bench`` runs for one deployment (a
:class:`~tokensched.scheduler.Scheduler` with the profile's policy over a
``SimExecutor``), and every replica keeps its own clock. One workload feeds
them all, through :class:`~tokensched.cluster.router.SimRouter`. The loop is
a discrete-event simulation: it always advances the replica whose clock is
furthest behind, after releasing every turn due by then, so a request meets
the others' state at most one step stale (a real gateway's load reports are
staler than that). An idle replica's clock jumps to the arrival it is given.

Metrics are those of the bench for the whole cluster (TTFT, ITL, TPM per GPU
over ``replicas x tp`` GPUs), plus each replica's share and prefix hit rate.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from pydantic import BaseModel, ConfigDict, Field

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.metrics import MetricsCollector, MetricsSummary, StatsLike
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import EOS_TOKEN_ID, bench_metrics, make_deployment, record_steps
from tokensched.benchmark.workloads import CodingAgentSource, SessionWorkload
from tokensched.cluster.router import BALANCE_ABS_THRESHOLD, BALANCE_REL_THRESHOLD, CACHE_THRESHOLD, SimRouter
from tokensched.cluster.spec import RouterPolicy
from tokensched.config import RequestSpec, SchedulerConfig
from tokensched.engine import Engine
from tokensched.errors import CapacityError, InvalidRequest, QueueFull, TokenschedError
from tokensched.executor import executor_package
from tokensched.plan import FinishReason
from tokensched.scheduler import Scheduler

_REMEMBERED_SESSIONS = 65_536  # hash chains kept for the router (a turn extends its session's last one)


class ClusterSimConfig(BaseModel):
    """``replicas`` copies of the bench's deployment (``bench``: model, GPU, TP, policy profile, load, timeline)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(default=4, ge=1, le=512)
    router: RouterPolicy = RouterPolicy.CACHE_AWARE
    bench: BenchConfig = BenchConfig(policy="prefix-aware")
    cache_threshold: float = Field(default=CACHE_THRESHOLD, ge=0.0, le=1.0)
    balance_abs_threshold: int = Field(default=BALANCE_ABS_THRESHOLD, ge=0)
    balance_rel_threshold: float = Field(default=BALANCE_REL_THRESHOLD, ge=1.0)


class ReplicaSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    requests: int
    prefix_hit_rate: float
    preemptions: int


class ClusterSimResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    config: ClusterSimConfig
    metrics: MetricsSummary
    replicas: list[ReplicaSummary]
    router_decisions: dict[str, int]
    requests_rejected: int
    sim_time_s: float
    wall_s: float
    cpu_s: float

    @property
    def speedup(self) -> float:
        """Simulated seconds of the whole cluster per wall second."""
        return self.sim_time_s / self.wall_s if self.wall_s > 0 else math.inf


@attrs.define
class _Replica:
    engine: Engine
    answers: dict[str, list[int]] = attrs.field(factory=dict)
    requests: int = 0

    @property
    def scheduler(self) -> Scheduler:
        return self.engine.scheduler

    @property
    def now(self) -> float:
        return float(self.engine.executor.now())

    @property
    def load(self) -> int:
        stats = self.scheduler.stats()
        return stats.num_running + stats.num_waiting


@attrs.frozen
class _Totals:
    """The replicas' stats summed, for the cluster-wide queue and KV samples (``StatsLike``)."""

    num_waiting: int
    num_running: int
    kv_usage: float
    prefix_hit_tokens: int
    prefix_query_tokens: int
    num_preemptions: int


class _Chains:
    """Chained block hashes of each session's latest prompt, extended as its turns arrive."""

    def __init__(self, block_size: int) -> None:
        self._bs = block_size
        self._sessions: OrderedDict[str, list[int]] = OrderedDict()

    def of(self, spec: RequestSpec) -> list[int]:
        tokens, bs = spec.prompt_token_ids, self._bs
        key = spec.session_id or spec.request_id
        chain = self._sessions.pop(key, None) or []
        parent = chain[-1] if chain else 0
        for lo in range(len(chain) * bs, len(tokens) // bs * bs, bs):
            parent = hash((parent, *tokens[lo : lo + bs]))
            chain.append(parent)
        self._sessions[key] = chain
        if len(self._sessions) > _REMEMBERED_SESSIONS:
            self._sessions.popitem(last=False)
        return chain


def _make_replica(
    config: BenchConfig, output_lengths: Callable[[str], int | None], seed: int, *, prefill_budget: int | None = None
) -> _Replica:
    """One deployment as ``run_bench`` builds it; ``prefill_budget`` overrides the profile's token budget."""
    sim = executor_package("sim")
    profile = PROFILES[config.policy]
    executor = sim.SimExecutor(
        make_deployment(config),
        block_size=config.block_size,
        output_lengths=output_lengths,
        eos_token_id=EOS_TOKEN_ID,
        mean_accepted_length=config.spec_accept_length if config.num_speculative_tokens else None,
        seed=seed,
    )
    settings: dict[str, Any] = {
        "num_blocks": executor.num_kv_blocks,
        "block_size": config.block_size,
        "num_speculative_tokens": config.num_speculative_tokens,
        **profile.scheduler_settings(speculative=config.num_speculative_tokens > 0),
    }
    if prefill_budget is not None:
        settings["max_batched_tokens"] = prefill_budget
    scheduler = Scheduler(
        SchedulerConfig.model_validate(settings), policy=profile.make_policy(config), clock=executor.now
    )
    return _Replica(Engine(scheduler, executor))


def make_workload(bench: BenchConfig, stop: float) -> SessionWorkload:
    """The bench's coding-agent workload, capped as ``run_bench`` caps it (a context no replica holds ends it)."""
    probe = executor_package("sim").CostModel(make_deployment(bench))
    capacity = min(probe.max_request_tokens(bench.block_size), probe.num_kv_blocks(bench.block_size) * bench.block_size)
    workload_config = bench.workload.model_copy(
        update={"max_context_tokens": min(bench.workload.max_context_tokens, capacity)}
    )
    window = (bench.warmup_s, bench.duration_s)
    return SessionWorkload(
        CodingAgentSource(workload_config, bench.arrivals, stop, bench.seed, window=window),
        ttft_deadline_s=bench.ttft_slo_s,
        eos_token_id=EOS_TOKEN_ID,
    )


def run_cluster(config: ClusterSimConfig, *, progress: Callable[[float], None] | None = None) -> ClusterSimResult:
    """Simulate the cluster over the bench's timeline; ``progress`` hears the fraction of simulated time done."""
    bench = config.bench
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    stop = bench.duration_s + bench.drain_s
    workload = make_workload(bench, stop)
    replicas = [
        _make_replica(bench, workload.planned_output_tokens, bench.seed * 1000 + r) for r in range(config.replicas)
    ]
    router = SimRouter(
        config.router,
        config.replicas,
        seed=bench.seed,
        cache_threshold=config.cache_threshold,
        balance_abs_threshold=config.balance_abs_threshold,
        balance_rel_threshold=config.balance_rel_threshold,
    )
    metrics = bench_metrics(bench, bench.num_gpus * config.replicas)
    rejected = _drive(replicas, router, workload, metrics, _Chains(bench.block_size), stop, progress)
    metrics.on_stats(stop, _totals(replicas))
    summaries = []
    for replica in replicas:
        stats = replica.scheduler.stats()
        summaries.append(
            ReplicaSummary(
                requests=replica.requests, prefix_hit_rate=stats.prefix_hit_rate, preemptions=stats.num_preemptions
            )
        )
    return ClusterSimResult(
        config=config,
        metrics=metrics.summarize(stop),
        replicas=summaries,
        router_decisions=dict(router.decisions) if config.router is RouterPolicy.CACHE_AWARE else {},
        requests_rejected=rejected,
        sim_time_s=stop,
        wall_s=time.perf_counter() - wall_start,
        cpu_s=time.process_time() - cpu_start,
    )


def _totals(replicas: Sequence[_Replica]) -> _Totals:
    return _sum_stats([r.scheduler.stats() for r in replicas])


def _sum_stats(stats: Sequence[StatsLike]) -> _Totals:
    """Replicas' stats summed (kv usage averaged): what a cluster-wide sample records."""
    return _Totals(
        num_waiting=sum(s.num_waiting for s in stats),
        num_running=sum(s.num_running for s in stats),
        kv_usage=sum(s.kv_usage for s in stats) / len(stats),
        prefix_hit_tokens=sum(s.prefix_hit_tokens for s in stats),
        prefix_query_tokens=sum(s.prefix_query_tokens for s in stats),
        num_preemptions=sum(s.num_preemptions for s in stats),
    )


def _drive(
    replicas: list[_Replica],
    router: SimRouter,
    workload: SessionWorkload,
    metrics: MetricsCollector,
    chains: _Chains,
    stop: float,
    progress: Callable[[float], None] | None,
) -> int:
    """Release due turns and route them; step the replica furthest behind; feed answers back."""
    rejected = 0
    steps = 0
    while True:
        busy = [r for r in replicas if r.scheduler.has_work]
        behind = min(busy, key=lambda r: r.now) if busy else None
        now = behind.now if behind is not None else math.inf
        due = workload.next_release_time()
        if due is not None and due <= now:
            now = due
        if now >= stop:
            return rejected
        if now >= metrics.next_sample_time:
            metrics.on_stats(now, _totals(replicas))
        if due is not None and due <= now:
            for spec in workload.release(now):
                rejected += _submit(spec, replicas, router, chains, metrics, workload)
            continue
        assert behind is not None  # something is busy, or the release above happened
        outputs = behind.engine.step()
        t = behind.now
        if t == now and not outputs and behind.engine.num_in_flight == 0:
            raise TokenschedError(f"t={now:.3f}s: a replica has unfinished requests but planned no step")
        record_steps(((t, outputs),), metrics, workload, behind.answers)
        steps += 1
        if progress is not None and steps % 1024 == 0:
            progress(min(now / stop, 1.0))


def _submit(
    spec: RequestSpec,
    replicas: list[_Replica],
    router: SimRouter,
    chains: _Chains,
    metrics: MetricsCollector,
    workload: SessionWorkload,
    before_submit: Callable[[int], None] | None = None,
) -> int:
    """Route one turn and submit it; 1 if its replica refused it (the session ends), else 0.

    ``before_submit(index)`` runs between the routing decision and the submit
    to the chosen replica (the DP lockstep applies that rank's run there).
    """
    arrival = spec.arrival_time if spec.arrival_time is not None else 0.0
    chain = chains.of(spec) if router.reads_block_hashes else ()  # hashing a long prompt is not free
    index = router.choose(spec.session_id, chain, [r.load for r in replicas])
    if before_submit is not None:
        before_submit(index)
    replica = replicas[index]
    if not replica.scheduler.has_work and replica.now < arrival:
        replica.engine.executor.wait_until(arrival)  # an idle replica's clock catches up with the world
    try:
        replica.scheduler.submit(spec)
    except (CapacityError, InvalidRequest, QueueFull):
        workload.on_finished(spec.request_id, (), arrival, FinishReason.ERROR)
        return 1
    replica.requests += 1
    replica.answers[spec.request_id] = []
    metrics.on_arrival(spec.request_id, len(spec.prompt_token_ids), arrival)
    return 0
