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
by the cluster simulation's loop. One thing is left out and is labelled where
the results are reported: SGLang runs every rank's batch in one forward pass
(the MoE layers gather all ranks' tokens), so a rank's step waits for the
slowest rank's attention; here each rank is priced as if the others were idle,
which makes the DP case faster than it is when several ranks are busy at once.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from tokensched.benchmark.cluster import _Chains, _drive, _Replica, _totals
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.metrics import MetricsCollector
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.run import EOS_TOKEN_ID, BenchResult, RunInfo, make_deployment
from tokensched.benchmark.workloads import CodingAgentSource, SessionWorkload, Trace, TraceSource
from tokensched.cluster.router import SimRouter
from tokensched.cluster.spec import RouterPolicy
from tokensched.config import SchedulerConfig
from tokensched.engine import Engine
from tokensched.executor import executor_package
from tokensched.scheduler import Scheduler

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
        _source(config, capacity, stop, trace), ttft_deadline_s=config.ttft_slo_s, eos_token_id=EOS_TOKEN_ID
    )
    replicas = [_rank(config, deployment, rank_blocks, workload, rank) for rank in range(ranks)]
    router = SimRouter(_ROUTERS[profile.dp_router], ranks, seed=config.seed)
    metrics = MetricsCollector(
        num_gpus=config.num_gpus,
        window_start=config.warmup_s,
        window_end=config.duration_s,
        sample_interval_s=config.sample_interval_s,
        ttft_slo_s=config.ttft_slo_s,
    )
    rejected = _drive(replicas, router, workload, metrics, _Chains(config.block_size), stop, progress)
    metrics.on_stats(stop, _totals(replicas))
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    counts = workload.counts
    run = RunInfo(
        deployment=f"{deployment.model.name} on {config.num_gpus}x {deployment.gpu.name}, "
        f"{profile.shape(config.tp)}, routed {profile.dp_router}",
        num_kv_blocks=rank_blocks * ranks,
        kv_capacity_tokens=rank_blocks * ranks * config.block_size,
        max_context_tokens=workload.header.max_context_tokens,
        sim_time_s=stop,
        num_steps=sum(r.scheduler.stats().num_steps for r in replicas),
        sessions_started=counts.sessions_started,
        sessions_completed=counts.sessions_completed,
        requests_released=counts.requests_released,
        requests_rejected=rejected,
        requests_unfinished=sum(len(r.scheduler.live) for r in replicas),
        rate_scale=workload.header.rate_scale,
        stand_in_answers=counts.stand_in_answers,
        wall_s=wall,
        cpu_s=cpu,
        speedup=stop / wall if wall > 0 else math.inf,
    )
    result = BenchResult(config=config, profile=profile.description, metrics=metrics.summarize(stop), run=run)
    return result, workload.trace()


def _source(config: BenchConfig, capacity: int, stop: float, trace: Trace | None) -> Any:
    """The bench's sessions (or a trace's), capped at what one rank can hold: a request lives on one rank."""
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


def _rank(config: BenchConfig, deployment: Any, blocks: int, workload: SessionWorkload, rank: int) -> _Replica:
    """One DP rank: the profile's per-rank scheduler over one rank's pool, stepped at one rank's cost."""
    sim = executor_package("sim")
    profile = PROFILES[config.policy]
    executor = sim.SimExecutor(
        deployment,
        block_size=config.block_size,
        output_lengths=workload.planned_output_tokens,
        eos_token_id=EOS_TOKEN_ID,
        mean_accepted_length=config.spec_accept_length if config.num_speculative_tokens else None,
        seed=config.seed * 1000 + rank,
        num_kv_blocks=blocks,
    )
    executor.cost_model = executor.cost_model.one_dp_rank()  # this rank's batch, not a balanced share of it
    settings: dict[str, Any] = {
        "num_blocks": blocks,
        "block_size": config.block_size,
        "num_speculative_tokens": config.num_speculative_tokens,
        **profile.scheduler_settings(speculative=config.num_speculative_tokens > 0),
    }
    scheduler = Scheduler(
        SchedulerConfig.model_validate(settings),
        policy=profile.make_policy(config),
        clock=executor.now,
        load_cost=executor,
    )
    return _Replica(Engine(scheduler, executor))
