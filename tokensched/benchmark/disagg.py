"""Prefill/decode disaggregation in the cluster simulation: P prefill replicas, D decode replicas, KV on the wire.

A turn goes to a prefill replica (chosen by the prefill router, cache-aware by
default, so a session's next turn finds its prefix there), which computes the
prompt and samples the first token: that is the turn's TTFT. The prompt's KV
then crosses the interconnect, ``prompt tokens x KV bytes per token per rank /
link bandwidth per GPU`` (every rank sends its share at once), and the turn
continues on a decode replica (least load by default) that only decodes:
its cost model charges nothing for computing the prompt again, because in a
disaggregated server those tokens arrive by transfer rather than by compute.
(A decode replica preempting a request would in truth recompute or re-fetch
it; here that is free too, a small optimism, counted in ``decode_preemptions``.)

Links, per GPU and direction:

- ``nvlink``: 900 GB/s, half of NVLink 5's 1.8 TB/s per B200 (both directions;
  the simulator's B200 preset, NVIDIA B200 datasheet). Prefill and decode in
  one NVL domain.
- ``infiniband``: 50 GB/s, one 400 Gb/s ConnectX-7 port per GPU (NVIDIA DGX
  B200 datasheet: 8x ConnectX-7 VPI, up to 400 Gb/s each). Prefill and decode
  on different nodes.

Both ignore per-transfer latency and congestion: the figures are lower bounds
on transfer time.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable
from typing import Any, Literal

import attrs
from pydantic import BaseModel, ConfigDict, Field

from tokensched.benchmark.cluster import (
    ClusterSimConfig,
    ReplicaSummary,
    _Chains,
    _make_replica,
    _Replica,
    _totals,
    make_workload,
)
from tokensched.benchmark.metrics import MetricsCollector, MetricsSummary
from tokensched.benchmark.run import bench_metrics
from tokensched.benchmark.workloads import SessionWorkload
from tokensched.cluster.router import SimRouter
from tokensched.cluster.spec import RouterPolicy
from tokensched.config import RequestSpec
from tokensched.errors import CapacityError, InvalidRequest, QueueFull, TokenschedError
from tokensched.plan import FinishReason, RequestOutput

GB = 1e9
LINK_BYTES_PER_S = {"nvlink": 900 * GB, "infiniband": 50 * GB}
_DECODE_SUFFIX = "#decode"


class DisaggConfig(BaseModel):
    """``prefill`` + ``decode`` replicas of the bench's deployment, joined by ``link``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prefill: int = Field(default=2, ge=1, le=256)
    decode: int = Field(default=2, ge=1, le=256)
    link: Literal["nvlink", "infiniband"] = "infiniband"
    prefill_router: RouterPolicy = RouterPolicy.CACHE_AWARE
    decode_router: RouterPolicy = RouterPolicy.LEAST_LOAD
    cluster: ClusterSimConfig = ClusterSimConfig()  # its ``bench`` sets deployment, profile, load and timeline


class DisaggResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    config: DisaggConfig
    metrics: MetricsSummary
    prefill: list[ReplicaSummary]
    decode: list[ReplicaSummary]
    transfer_ms_mean: float
    transfers: int
    requests_rejected: int
    sim_time_s: float
    wall_s: float
    cpu_s: float


class _DecodeOnlyCost:
    """A cost model that charges a step for its decodes only: prefill tokens arrived by KV transfer."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def step_time(self, shape: Any) -> float:
        prefill_tokens = shape.prefill_kv_tokens - shape.prefill_context_tokens
        if prefill_tokens == 0:
            return float(self._inner.step_time(shape))
        decode_only = attrs.evolve(
            shape,
            num_tokens=shape.num_tokens - prefill_tokens,
            prefill_pairs=0,
            prefill_kv_tokens=0,
            prefill_context_tokens=0,
        )
        return float(self._inner.step_time(decode_only)) if decode_only.num_tokens else 0.0


@attrs.define
class _Transfer:
    original: RequestSpec
    first_tokens: list[int]


def run_disagg(config: DisaggConfig, *, progress: Callable[[float], None] | None = None) -> DisaggResult:
    """Simulate the disaggregated cluster over the bench's timeline."""
    bench = config.cluster.bench
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    stop = bench.duration_s + bench.drain_s
    workload = make_workload(bench, stop)

    def planned_decode(request_id: str) -> int | None:
        planned = workload.planned_output_tokens(request_id.removesuffix(_DECODE_SUFFIX))
        return None if planned is None else max(1, planned - 1)

    prefill = [_make_replica(bench, lambda _: None, bench.seed * 1000 + r) for r in range(config.prefill)]
    budget = bench.workload.max_context_tokens + 1  # a transferred prompt lands in one (free) step
    decode = [
        _make_replica(bench, planned_decode, bench.seed * 1000 + 500 + r, prefill_budget=budget)
        for r in range(config.decode)
    ]
    for replica in decode:
        executor: Any = replica.engine.executor
        executor.cost_model = _DecodeOnlyCost(executor.cost_model)
    kv_bytes_per_token = float(decode[0].engine.executor.cost_model.kv_bytes_per_token)  # type: ignore[attr-defined]
    bandwidth = LINK_BYTES_PER_S[config.link]
    cluster = config.cluster
    routers = [
        SimRouter(
            policy,
            count,
            seed=bench.seed + i,
            cache_threshold=cluster.cache_threshold,
            balance_abs_threshold=cluster.balance_abs_threshold,
            balance_rel_threshold=cluster.balance_rel_threshold,
        )
        for i, (policy, count) in enumerate(
            ((config.prefill_router, config.prefill), (config.decode_router, config.decode))
        )
    ]
    metrics = bench_metrics(bench, bench.num_gpus * (config.prefill + config.decode))
    loop = _Loop(prefill, decode, routers[0], routers[1], workload, metrics, _Chains(bench.block_size))
    loop.seconds_per_token = kv_bytes_per_token / bandwidth
    loop.run(stop, progress)
    everyone = prefill + decode
    metrics.on_stats(stop, _totals(everyone))

    def summary(replicas: list[_Replica]) -> list[ReplicaSummary]:
        out = []
        for replica in replicas:
            stats = replica.scheduler.stats()
            out.append(
                ReplicaSummary(
                    requests=replica.requests, prefix_hit_rate=stats.prefix_hit_rate, preemptions=stats.num_preemptions
                )
            )
        return out

    return DisaggResult(
        config=config,
        metrics=metrics.summarize(stop),
        prefill=summary(prefill),
        decode=summary(decode),
        transfer_ms_mean=1e3 * loop.transfer_s / loop.transfers if loop.transfers else math.nan,
        transfers=loop.transfers,
        requests_rejected=loop.rejected,
        sim_time_s=stop,
        wall_s=time.perf_counter() - wall_start,
        cpu_s=time.process_time() - cpu_start,
    )


class _Loop:
    """The discrete-event loop over both pools and the transfers in flight."""

    def __init__(
        self,
        prefill: list[_Replica],
        decode: list[_Replica],
        prefill_router: SimRouter,
        decode_router: SimRouter,
        workload: SessionWorkload,
        metrics: MetricsCollector,
        chains: _Chains,
    ) -> None:
        self.prefill, self.decode = prefill, decode
        self.prefill_router, self.decode_router = prefill_router, decode_router
        self.workload, self.metrics, self.chains = workload, metrics, chains
        self.seconds_per_token = 0.0
        self.in_flight: list[tuple[float, int, _Transfer]] = []  # (arrival at the decode pool, tie-break, transfer)
        self.originals: dict[str, RequestSpec] = {}
        self.first_tokens: dict[str, list[int]] = {}  # a turn's first token(s), from prefill, while it decodes
        self.transfers = 0
        self.transfer_s = 0.0
        self.rejected = 0
        self._seq = 0

    def run(self, stop: float, progress: Callable[[float], None] | None) -> None:
        everyone = self.prefill + self.decode
        steps = 0
        while True:
            busy = [r for r in everyone if r.scheduler.has_work]
            behind = min(busy, key=lambda r: r.now) if busy else None
            now = behind.now if behind is not None else math.inf
            due = self.workload.next_release_time()
            landing = self.in_flight[0][0] if self.in_flight else math.inf
            event = min(due if due is not None else math.inf, landing)
            if event <= now:
                now = event
            if now >= stop:
                return
            if now >= self.metrics.next_sample_time:
                self.metrics.on_stats(now, _totals(everyone))
            if landing <= now:
                _, _, transfer = heapq.heappop(self.in_flight)
                self._to_decode(transfer, landing)
                continue
            if due is not None and due <= now:
                for spec in self.workload.release(now):
                    self._to_prefill(spec)
                continue
            assert behind is not None
            outputs = behind.engine.step()
            t = behind.now
            if t == now and not outputs and behind.engine.num_in_flight == 0:
                raise TokenschedError(f"t={now:.3f}s: a replica has unfinished requests but planned no step")
            for output in outputs:
                if output.new_token_ids:
                    behind.answers[output.request_id].extend(output.new_token_ids)
                if output.finish_reason is not None:
                    self._finished(output, behind.answers.pop(output.request_id), t)
                else:
                    self._relay(output, t)
            steps += 1
            if progress is not None and steps % 1024 == 0:
                progress(min(now / stop, 1.0))

    def _to_prefill(self, spec: RequestSpec) -> None:
        arrival = spec.arrival_time if spec.arrival_time is not None else 0.0
        index = self.prefill_router.choose(spec.session_id, self.chains.of(spec), [r.load for r in self.prefill])
        first = spec.model_copy(update={"max_tokens": 1})
        if not self._submit(self.prefill[index], first, arrival):
            self.rejected += 1
            self.workload.on_finished(spec.request_id, (), arrival, FinishReason.ERROR)
            return
        self.originals[spec.request_id] = spec
        self.metrics.on_arrival(spec.request_id, len(spec.prompt_token_ids), arrival)

    def _to_decode(self, transfer: _Transfer, at: float) -> None:
        original = transfer.original
        spec = original.model_copy(
            update={
                "request_id": original.request_id + _DECODE_SUFFIX,
                "prompt_token_ids": [*original.prompt_token_ids, *transfer.first_tokens],
                "max_tokens": max(1, original.max_tokens - len(transfer.first_tokens)),
                "arrival_time": at,
                "session_id": None,
            }
        )
        index = self.decode_router.choose(None, (), [r.load for r in self.decode])
        if not self._submit(self.decode[index], spec, at):
            self.rejected += 1
            self.first_tokens.pop(original.request_id, None)
            self._finish_turn(original.request_id, transfer.first_tokens, at, FinishReason.ERROR)

    def _submit(self, replica: _Replica, spec: RequestSpec, at: float) -> bool:
        if not replica.scheduler.has_work and replica.now < at:
            replica.engine.executor.wait_until(at)
        try:
            replica.scheduler.submit(spec)
        except (CapacityError, InvalidRequest, QueueFull):
            return False
        replica.requests += 1
        replica.answers[spec.request_id] = []
        return True

    def _relay(self, output: RequestOutput, t: float) -> None:
        original = output.request_id.removesuffix(_DECODE_SUFFIX)
        decoding = original != output.request_id
        self.metrics.on_outputs(
            [
                RequestOutput(
                    request_id=original,
                    new_token_ids=output.new_token_ids,
                    num_cached_tokens=0 if decoding else output.num_cached_tokens,
                )
            ],
            t,
        )

    def _finished(self, output: RequestOutput, tokens: list[int], t: float) -> None:
        self._relay(output, t)
        if output.request_id.endswith(_DECODE_SUFFIX):
            original_id = output.request_id.removesuffix(_DECODE_SUFFIX)
            self._finish_turn(original_id, self.first_tokens.pop(original_id, []) + tokens, t, output.finish_reason)
            return
        # the prefill side's first token: the turn ends here, or its KV goes to the decode pool
        original = self.originals[output.request_id]
        planned = self.workload.planned_output_tokens(original.request_id)
        failed = output.finish_reason in (FinishReason.ABORT, FinishReason.ERROR)
        if failed or (planned is not None and planned <= len(tokens)):
            self._finish_turn(original.request_id, tokens, t, output.finish_reason)
            return
        seconds = len(original.prompt_token_ids) * self.seconds_per_token
        self.transfers += 1
        self.transfer_s += seconds
        self.first_tokens[original.request_id] = tokens
        heapq.heappush(self.in_flight, (t + seconds, self._seq, _Transfer(original, tokens)))
        self._seq += 1

    def _finish_turn(self, request_id: str, answer: list[int], t: float, reason: FinishReason | None) -> None:
        self.metrics.on_outputs([RequestOutput(request_id=request_id, new_token_ids=[], finish_reason=reason)], t)
        self.originals.pop(request_id, None)
        self.workload.on_finished(request_id, answer, t, reason)
