"""DP attention as SGLang runs it: a scheduler, radix cache and KV pool per rank, requests routed to one rank.

With ``--enable-dp-attention --dp N`` SGLang launches one scheduler per DP rank;
each rank keeps its own requests' latents in its own pool, with its own radix
cache, and the data-parallel controller sends each new request to one rank by
``load_balance_method`` (``auto`` resolves to ``round_robin`` outside PD
disaggregation: sglang ``server_args.py`` ``_handle_load_balance_method``;
``managers/data_parallel_controller.py`` ``round_robin_scheduler`` is a counter
over the ranks and looks at no prefix). A session's next turn therefore lands
on the rank that holds its previous turns only when the counter happens to come
round to it, and every other rank prefills whatever of that conversation it
does not hold itself.

The simulator's pooled DP-attention model (one scheduler over every rank's
blocks, requests balanced per step) cannot show that, so a profile with
``dp_router`` set runs here: N replicas of the bench's scheduler, one per rank,
each over :meth:`tokensched_sim.cost.CostModel.one_dp_rank` (one rank's pool;
its own batch priced with every head on that rank), behind
:class:`~tokensched.cluster.router.SimRouter` in the profile's routing, driven
in lockstep (:func:`drive_lockstep`): SGLang runs every rank's batch in one
forward pass (the MoE layers gather all ranks' tokens; an idle rank runs an idle
batch), so each step every busy rank runs its own batch and all of them finish
when the slowest does. What the lockstep leaves out: the MoE of a step is priced
as the slowest rank's own (its tokens, every expert's weights read once), not
over every rank's tokens together, which is close while the weight reads
dominate, as they do at the few requests a step of this workload.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from tokensched.benchmark.cluster import _Chains, _Replica, _submit, _sum_stats, _Totals, _totals
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.metrics import MetricsCollector, StatsLike
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import (
    EOS_TOKEN_ID,
    BenchResult,
    bench_metrics,
    bench_result,
    make_deployment,
    record_steps,
    sim_engine,
    workload_source,
)
from tokensched.benchmark.workloads import SessionWorkload, Trace
from tokensched.cluster.router import SimRouter
from tokensched.cluster.spec import RouterPolicy
from tokensched.engine import Engine
from tokensched.errors import TokenschedError
from tokensched.executor import RunSteps, SteppedRunExecutor, executor_package
from tokensched.plan import RequestOutput
from tokensched.stats import SchedulerStats

_RUN_STEPS = 256  # steps a rank's decode run may take at most (as the single-engine driver's runs)
# A run costs about what a decode single step costs to set up and apply, so one is started only when the rounds
# before the driver's next event (a release, a sample) look to be at least this many, at the last round's length.
_MIN_RUN_ROUNDS = 4
_ROUTERS = {"round_robin": RouterPolicy.ROUND_ROBIN, "least_load": RouterPolicy.LEAST_LOAD}


def run_dp_attention(
    config: BenchConfig, *, trace: Trace | None = None, progress: Callable[[float], None] | None = None
) -> tuple[BenchResult, Trace]:
    """``run_bench`` for a profile with a scheduler per DP-attention rank; the same result and trace types."""
    profile = PROFILES[config.policy]
    if not profile.per_rank_schedulers or profile.dp_router is None:
        raise ValueError(f"profile {config.policy!r} does not run a scheduler per DP-attention rank")
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    sim = executor_package("sim")
    deployment = make_deployment(config)
    ranks = deployment.tp
    rank_cost = sim.CostModel(deployment).one_dp_rank()
    rank_blocks = rank_cost.num_kv_blocks(config.block_size)
    capacity = min(rank_cost.max_request_tokens(config.block_size), rank_blocks * config.block_size)
    stop = config.duration_s + config.drain_s
    workload = SessionWorkload(
        workload_source(config, capacity, stop, trace), ttft_deadline_s=config.ttft_slo_s, eos_token_id=EOS_TOKEN_ID
    )
    replicas = [_rank(config, deployment, rank_blocks, workload, rank) for rank in range(ranks)]
    router = SimRouter(_ROUTERS[profile.dp_router], ranks, seed=config.seed)
    metrics = bench_metrics(config, config.num_gpus)
    rejected = drive_lockstep(replicas, router, workload, metrics, _Chains(config.block_size), stop, progress)
    metrics.on_stats(stop, _totals(replicas))
    return bench_result(
        config,
        metrics,
        workload,
        deployment=f"{deployment.model.name} on {config.num_gpus}x {deployment.gpu.name}, "
        f"{profile.shape(config.tp)}, routed {profile.dp_router}",
        num_kv_blocks=rank_blocks * ranks,
        sim_time_s=stop,
        num_steps=sum(r.scheduler.stats().num_steps for r in replicas),
        rejected=rejected,
        unfinished=sum(len(r.scheduler.live) for r in replicas),
        started=(wall_start, cpu_start),
    )


def _rank(config: BenchConfig, deployment: Any, blocks: int, workload: SessionWorkload, rank: int) -> _Replica:
    """One DP rank: the profile's per-rank scheduler over one rank's pool, stepped at one rank's cost."""
    executor, scheduler = sim_engine(
        config, deployment, workload, seed=config.seed * 1000 + rank, num_kv_blocks=blocks, host_tier=False
    )
    executor.cost_model = executor.cost_model.one_dp_rank()  # this rank's batch, not a balanced share of it
    return _Replica(Engine(scheduler, executor))


def _sample(
    ranks: list[_Replica], out: list[_RankRun | None], metrics: MetricsCollector, workload: SessionWorkload
) -> _Totals:
    """The ranks' stats summed as single steps would have them now, with some ranks' runs still out.

    A run out changes nothing a sample reads but the free blocks (no
    admission, finish or preemption happens inside one); :meth:`_RankRun.stats`
    gives them as single steps would. A run it cannot say that of is applied
    first (its rank starts a new one in the next round).
    """
    stats: list[StatsLike] = []
    for i, rank in enumerate(ranks):
        now = rank.scheduler.stats()
        run = out[i]
        if run is not None:
            seen = run.stats(now)
            if seen is None:
                run.complete(rank, metrics, workload)
                out[i] = None
            else:
                stats.append(seen)
                continue
        stats.append(now)
    return _sum_stats(stats)


def _stepped(rank: _Replica) -> SteppedRunExecutor | None:
    """``rank``'s executor if a driver can step its decode runs, else None (the rank takes single steps)."""
    executor = rank.engine.executor
    return executor if isinstance(executor, SteppedRunExecutor) else None


def drive_lockstep(
    ranks: list[_Replica],
    router: SimRouter,
    workload: SessionWorkload,
    metrics: MetricsCollector,
    chains: _Chains,
    stop: float,
    progress: Callable[[float], None] | None = None,
    *,
    runs: bool = True,
) -> int:
    """Step every busy rank together, each step ending when its slowest rank's does; returns requests refused.

    Turns due by the current time are routed first (an idle rank's clock catches
    up with the arrival); then each rank with work runs one step from the common
    time, and every one of them waits for the slowest before the next step, as
    SGLang's DP-attention ranks do in their shared forward pass.

    A rank whose scheduler offers a decode run (:mod:`tokensched.decode_run`)
    takes its lockstep steps from the run (:class:`_RankRun`), the others
    single steps, in the same rounds: the same plans, tokens and times as
    single steps everywhere (``runs=False``), with less CPU a decode step.
    A released turn's rank has its run applied before the turn is submitted
    to it (the run was planned without that turn in the queue), and every
    run is applied at the end; the other ranks' runs go on, since routing
    reads only a rank's running and waiting counts, which no step inside a
    run changes (a run ends at the step that finishes a row). A metrics
    sample reads a rank with a run out as single steps would have it
    (:func:`_sample`).
    """
    rejected = 0
    steps = 0
    now = 0.0
    out: list[_RankRun | None] = [None] * len(ranks)  # each rank's run, while it has one
    stepped = [_stepped(rank) if runs else None for rank in ranks]
    last_round = math.inf  # the previous round's length (a rank's step with a prefill makes it long)

    def apply_run(i: int) -> None:
        run = out[i]
        if run is not None:
            run.complete(ranks[i], metrics, workload)
            out[i] = None

    while True:
        due = workload.next_release_time()
        if now >= stop:
            for i in range(len(ranks)):
                apply_run(i)
            return rejected
        if due is not None and due <= now:
            for spec in workload.release(now):
                rejected += _submit(spec, ranks, router, chains, metrics, workload, apply_run)
            continue
        if now >= metrics.next_sample_time:
            metrics.on_stats(now, _sample(ranks, out, metrics, workload))
        busy = [i for i, r in enumerate(ranks) if r.scheduler.has_work]
        if not busy:
            now = min(due if due is not None else stop, max(metrics.next_sample_time, now), stop)
            continue
        until = min(due if due is not None else stop, stop)  # runs go on across samples (see _sample)
        runs_pay = until - now >= _MIN_RUN_ROUNDS * last_round  # else a new run would likely end within a few
        took: list[tuple[int, Sequence[RequestOutput] | None]] = []  # each busy rank's single step (None: its run's)
        for i in busy:
            rank = ranks[i]
            rank.engine.executor.wait_until(now)  # a rank that got work while the others ran starts with them
            run = out[i]
            if run is not None and not run.launch_next(now):
                run.complete(rank, metrics, workload)
                run = out[i] = None
            executor = stepped[i]
            if run is None and executor is not None and runs_pay:
                run = out[i] = _RankRun.begin(rank, executor)
            if run is not None:
                run.collect(rank)
                took.append((i, None))
            else:
                took.append((i, rank.engine.step()))
        end = max(ranks[i].engine.executor.now() for i in busy)
        for i, outputs in took:
            rank = ranks[i]
            rank.engine.executor.wait_until(end)
            run = out[i]
            if run is not None:
                out[i] = run.ended(end, rank, metrics, workload)
                continue
            assert outputs is not None
            if end == now and not outputs and rank.engine.num_in_flight == 0:
                raise TokenschedError(f"t={now:.3f}s: a DP rank has unfinished requests but planned no step")
            record_steps(((end, outputs),), metrics, workload, rank.answers)
        last_round, now = end - now, end
        steps += 1
        if progress is not None and steps % 1024 == 0:
            progress(min(now / stop, 1.0))


class _RankRun:
    """One rank's decode run inside the lockstep: a step a round, each recorded at the round's end.

    The rank's executor launches step ``j`` of the run when the round starts
    (its clock at the round's start, as for a single step) and collects it;
    the round ends at the slowest rank's end, which :meth:`ended` notes as
    the step's time. The run is applied (``complete_run``) right after the
    step its cursor stops it at (the clock then at that step's own end, where
    a single step's ``complete`` would read it for a finish), or before a
    round it may not run: one at or after its ``admission_shut_until``, one
    its cursor plans no step for, or one the driver acts before (a turn routed to its rank,
    the end, a metrics sample that :meth:`stats` cannot answer for it); a
    run that ends there ended with a plain step, whose application reads no
    clock. Runs start only with no step in flight (one group): with two
    groups in flight the rank takes single steps. A run may carry the
    non-final chunks of the one prompt the rank is prefilling beside its
    decodes (``plan_run(..., chunks=True)``): most of a rank's steps are
    such steps, and a run's step costs a fraction of a single step's.
    """

    __slots__ = ("_base", "_outputs", "_sampled", "_shut", "_steps", "_times")

    def __init__(self, steps: RunSteps, admission_shut_until: float, sampled: bool) -> None:
        self._steps = steps
        self._shut = admission_shut_until
        self._sampled = sampled  # whether :meth:`stats` can tell the free blocks (no block pending)
        self._base = steps.cursor.allocated  # the blocks of the steps planned when it began (taken by plan_run)
        self._times: list[float] = []  # each collected step's round end
        self._outputs: list[Sequence[RequestOutput]] | None = None  # once applied

    @classmethod
    def begin(cls, rank: _Replica, executor: SteppedRunExecutor) -> _RankRun | None:
        """The run ``rank``'s scheduler offers now, its first step launched; None: a single step instead."""
        if rank.engine.num_in_flight:
            return None
        scheduler = rank.scheduler
        plan = scheduler.plan_run(_RUN_STEPS, cross_blocks=True, chunks=True)
        if plan is None:
            return None
        steps = executor.begin_run(plan)
        steps.start()
        return cls(steps, plan.admission_shut_until, scheduler.pool.num_pending == 0)

    def stats(self, stats: SchedulerStats) -> StatsLike | None:
        """What a sample reads of the rank now, given its scheduler's ``stats`` with this run out; None: unknown.

        Until the run is applied the scheduler's pool lacks the blocks its
        later steps' plans took (single steps allocate each step's at its
        plan; the steps of the rounds so far are all planned) and holds the
        blocks they gave back (a rollback frees its block when its step is
        applied): the cursor counts both, and nothing else a sample reads
        moves inside a run. Blocks pending a step (freed as it completes)
        it cannot tell apart: None.
        """
        if not self._sampled:
            return None
        taken = self._steps.cursor.allocated - self._base
        seen = attrs.evolve(stats, num_free_blocks=stats.num_free_blocks - taken) if taken else stats
        return _Totals(
            num_waiting=seen.num_waiting,
            num_running=seen.num_running,
            kv_usage=seen.kv_usage,
            prefix_hit_tokens=seen.prefix_hit_tokens,
            prefix_query_tokens=seen.prefix_query_tokens,
            num_preemptions=seen.num_preemptions,
        )

    def launch_next(self, now: float) -> bool:
        """Launch the run's next step for the round starting at ``now``; False when the run may not take it."""
        return now < self._shut and self._steps.launch_next()

    def collect(self, rank: _Replica) -> None:
        """Collect the round's step (the rank's clock moves to its own end); apply the run if it stops there."""
        if not self._steps.collect():
            self._outputs = rank.scheduler.complete_run(self._steps.result())

    def ended(
        self, end: float, rank: _Replica, metrics: MetricsCollector, workload: SessionWorkload
    ) -> _RankRun | None:
        """The round ended at ``end``: record the run if it was applied; the run if it goes on, else None."""
        self._times.append(end)
        if self._outputs is None:
            return self
        record_steps(list(zip(self._times, self._outputs, strict=True)), metrics, workload, rank.answers)
        return None

    def complete(self, rank: _Replica, metrics: MetricsCollector, workload: SessionWorkload) -> None:
        """Apply the steps collected and record their outputs at their rounds' ends (the run takes no more)."""
        outputs = rank.scheduler.complete_run(self._steps.result())
        record_steps(list(zip(self._times, outputs, strict=True)), metrics, workload, rank.answers)
