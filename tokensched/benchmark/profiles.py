"""Engine profiles: a scheduling policy, the scheduler settings of the stack it mirrors, and its deployment.

A profile is the scheduler side of a serving engine (its policy, token budget per
step, running-set cap, chunking) plus what the simulator needs to model the rest:
the simulator engine (``engine``: memory rule, kernels) and the deployment shape
(tensor parallelism, attention TP or DP, MoE TP or EP). ``tp=None`` takes the run's
``--tp``; a profile that names its TP (``sglang-tp8``) keeps it.

Settings and where they come from (engine defaults for this hardware class; the
simulator's side of each engine is documented in ``tokensched_sim.engines``):

- ``trtllm`` (TensorRT-LLM-like, TP4 as published): requests in arrival order
  (its capacity scheduler serves FCFS), ``max_num_tokens=8192`` and
  ``max_batch_size=2048`` (``BuildConfig`` defaults in tensorrt_llm/llmapi/llm_args.py),
  chunked context on (``enable_chunked_prefill=True``; without it a 200k prompt would
  need ``max_num_tokens`` >= 200k), KV block reuse on (``KvCacheConfig.enable_block_reuse``
  default). Not modelled: its default ``GUARANTEED_NO_EVICT`` capacity policy, which
  reserves a request's whole answer up front; this scheduler admits by prompt and
  preempts by recompute, as ``MAX_UTILIZATION`` does.
- ``sglang`` / ``sglang-tp8`` (SGLang-like at TP4 and TP8, the published run used TP8
  because its EAGLE ran out of memory at TP4): longest-prefix-match order
  (``schedule_policy="lpm"``, the ServerArgs default), ``chunked_prefill_size=16384``
  (ServerArgs ``_handle_gpu_memory_settings`` for GPUs over 160 GB),
  ``max_running_requests`` left to the pool (1024 here), retraction by recompute. With
  EAGLE (``--spec-tokens`` > 0), what ``ServerArgs._handle_speculative_decoding`` sets
  when the user does not: ``max_running_requests=48`` and the overlap scheduler off
  (one step in flight); its engine runs prefill and decode batches as separate passes
  (``enable_mixed_chunk`` is off by default and forced off with EAGLE).
- ``trtllm-latency`` (the reproduction's TensorRT-LLM): NVIDIA's published B200 TP4
  configuration for DeepSeek-R1-class models (TensorRT-LLM
  ``examples/configs/database/deepseek-ai/DeepSeek-R1-0528/B200/8k1k_tp4_conc*.yaml``: TP4,
  MoE TP, FP8 KV, ``free_gpu_memory_fraction=0.75``, ``max_num_tokens=8320``; the curated
  ``deepseek-r1-latency.yaml`` also uses 0.75), since the published engines were configured
  for low latency.
- ``sglang-tp8-dp`` (a sensitivity case, not the default: whether the published run used it is not
  published): SGLang at TP8 with ``--enable-dp-attention --dp 8``, as SGLang's DeepSeek-V3 / Kimi-K2
  launch commands commonly add. Each DP rank runs its own scheduler with its own radix cache and KV pool
  (attention weights replicated, every head on the rank); the data-parallel controller sends each
  request to one rank by ``load_balance_method``, whose ``auto`` default resolves to ``round_robin``
  outside PD disaggregation (sglang server_args.py ``_handle_load_balance_method``;
  managers/data_parallel_controller.py ``round_robin_scheduler``: a counter over ranks, no prefix
  lookup). ``ServerArgs._handle_data_parallelism`` divides ``chunked_prefill_size`` by ``dp_size``
  (16384 / 8 = 2048 tokens a rank a step), and the per-rank scheduler gets ``max_running_requests //
  dp_size`` (48 / 8 = 6 with EAGLE). Simulated by :mod:`tokensched.benchmark.dp_attention`.
  ``sglang-tp8-dp-lb``: the same with ``load_balance_method=total_requests`` (fewest requests first),
  modelled as least load (running + waiting).
- ``trtllm-no-reuse``: ``trtllm`` with KV block reuse off, a sensitivity case (TensorRT-LLM's
  EAGLE paths have not always supported block reuse; see docs/sim.md).
- ``vllm`` (vLLM-like): FCFS, ``max_num_batched_tokens=8192``, ``max_num_seqs=1024``
  (V1 EngineArgs defaults for >=70 GiB GPUs in the API server), block-hash prefix
  cache, recompute preemption.
- ``prefix-aware``, ``retain``, ``slo``: tokensched's own policies on the
  ``tokensched`` engine (TensorRT-LLM's memory rule, the same kernels), with
  tokensched's default budget of 8192 tokens per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from tokensched.policies import FCFSPolicy, Policy, PrefixAwarePolicy, SLOPolicy

if TYPE_CHECKING:
    from tokensched.benchmark.config import BenchConfig

Engine = Literal["vllm", "sglang", "trtllm", "tokensched"]


@attrs.frozen(slots=True)
class PolicyProfile:
    """A named policy with the scheduler settings, simulator engine and deployment shape of the stack it mirrors."""

    name: str
    description: str
    make_policy: Callable[[BenchConfig], Policy]
    settings: dict[str, Any] = attrs.field(factory=dict)  # SchedulerConfig overrides
    speculative_settings: dict[str, Any] = attrs.field(factory=dict)  # further overrides when drafts are on
    engine: Engine = "tokensched"
    tp: int | None = None  # None: the run's tp
    attention: Literal["tp", "dp"] = "tp"
    moe: Literal["tp", "ep"] = "tp"
    memory_fraction: float | None = None  # the engine's memory-rule fraction as the mirrored config sets it
    dp_router: Literal["round_robin", "least_load"] | None = None  # DP attention: a scheduler per rank, routed so

    @property
    def per_rank_schedulers(self) -> bool:
        """Each DP-attention rank schedules its own requests (SGLang); else one scheduler sees every rank's pool."""
        return self.attention == "dp" and self.dp_router is not None

    def scheduler_settings(self, *, speculative: bool) -> dict[str, Any]:
        """The ``SchedulerConfig`` overrides of this stack, with those its engine applies under speculation."""
        return {**self.settings, **self.speculative_settings} if speculative else dict(self.settings)

    def shape(self, tp: int) -> str:
        """``"TP4 (attention TP, MoE TP) on trtllm"``: the deployment this profile runs at ``tp``."""
        shape = f"TP{self.tp or tp} (attention {self.attention.upper()}, MoE {self.moe.upper()}) on {self.engine}"
        return f"{shape}, a pool and scheduler per rank" if self.per_rank_schedulers else shape


def _fcfs(_: BenchConfig) -> Policy:
    return FCFSPolicy()


def _lpm(_: BenchConfig) -> Policy:
    return PrefixAwarePolicy()


def _slo(config: BenchConfig) -> Policy:
    return SLOPolicy(default_ttft_deadline=config.ttft_slo_s)


_SGLANG = {"max_batched_tokens": 16384, "max_running": 1024}
# What SGLang's ServerArgs._handle_speculative_decoding sets for EAGLE/EAGLE3 when the user does not: at most 48
# running requests, and the overlap scheduler off unless SGLANG_ENABLE_SPEC_V2 (one step in flight at a time).
_SGLANG_EAGLE = {"max_running": 48, "max_steps_in_flight": 1}
_SGLANG_TEXT = (
    "SGLang-like: longest-prefix-match order (schedule_policy=lpm), chunked_prefill_size=16384 "
    "(ServerArgs default for GPUs over 160 GB), recompute on retraction; with EAGLE max_running_requests=48 and "
    "the overlap scheduler off (ServerArgs._handle_speculative_decoding); engine sglang (mem_fraction_static as "
    "ServerArgs derives it; prefill and decode batches as separate passes, enable_mixed_chunk=False)"
)

# SGLang with --enable-dp-attention --dp 8 at TP8: per rank, chunked_prefill_size // dp_size and
# max_running_requests // dp_size (ServerArgs._handle_data_parallelism; the per-rank scheduler's cap).
_DP8 = 8
_SGLANG_DP = {"max_batched_tokens": 16384 // _DP8, "max_running": 1024 // _DP8}
_SGLANG_DP_EAGLE = {"max_running": 48 // _DP8, "max_steps_in_flight": 1}
_SGLANG_DP_TEXT = (
    _SGLANG_TEXT + ", TP8 with DP attention (--enable-dp-attention --dp 8): a scheduler, radix cache and KV pool per "
    "rank, chunked_prefill_size 16384 // 8 = 2048 and max_running_requests 48 // 8 = 6 per rank "
    "(ServerArgs._handle_data_parallelism); a sensitivity case, not the published configuration"
)

PROFILES: dict[str, PolicyProfile] = {
    profile.name: profile
    for profile in (
        PolicyProfile(
            "trtllm",
            "TensorRT-LLM-like: FCFS, max_num_tokens=8192, max_batch_size=2048 (BuildConfig defaults), chunked "
            "context on, KV block reuse; engine trtllm (free_gpu_memory_fraction=0.9 of memory free after weights)",
            _fcfs,
            {"max_batched_tokens": 8192, "max_running": 2048},
            engine="trtllm",
            tp=4,
        ),
        PolicyProfile(
            "sglang", _SGLANG_TEXT + ", TP4", _lpm, dict(_SGLANG), dict(_SGLANG_EAGLE), engine="sglang", tp=4
        ),
        PolicyProfile(
            "sglang-tp8",
            _SGLANG_TEXT + ", TP8 (the published SGLang run: EAGLE ran out of memory at TP4)",
            _lpm,
            dict(_SGLANG),
            dict(_SGLANG_EAGLE),
            engine="sglang",
            tp=8,
        ),
        PolicyProfile(
            "sglang-tp8-dp",
            _SGLANG_DP_TEXT + "; requests routed round robin (load_balance_method auto = round_robin)",
            _lpm,
            dict(_SGLANG_DP),
            dict(_SGLANG_DP_EAGLE),
            engine="sglang",
            tp=_DP8,
            attention="dp",
            dp_router="round_robin",
        ),
        PolicyProfile(
            "sglang-tp8-dp-lb",
            _SGLANG_DP_TEXT + "; requests routed to the rank with the fewest (load_balance_method total_requests)",
            _lpm,
            dict(_SGLANG_DP),
            dict(_SGLANG_DP_EAGLE),
            engine="sglang",
            tp=_DP8,
            attention="dp",
            dp_router="least_load",
        ),
        PolicyProfile(
            "trtllm-latency",
            "TensorRT-LLM-like in NVIDIA's published configuration for DeepSeek-R1-class models on B200 at TP4 "
            "(TensorRT-LLM examples/configs/database/deepseek-ai/DeepSeek-R1-0528/B200/8k1k_tp4_conc*.yaml, and "
            "curated/deepseek-r1-latency.yaml): kv_cache_config.free_gpu_memory_fraction=0.75, max_num_tokens=8320, "
            "FP8 KV; otherwise as trtllm",
            _fcfs,
            {"max_batched_tokens": 8320, "max_running": 2048},
            engine="trtllm",
            tp=4,
            memory_fraction=0.75,
        ),
        PolicyProfile(
            "trtllm-no-reuse",
            "TensorRT-LLM-like as trtllm, with KV block reuse off: a sensitivity case, not the default. TensorRT-LLM "
            "1.0's speculative-decoding docs name MTP as the one speculation algorithm supporting KV cache reuse and "
            "the overlap scheduler, and PR #5448 turned block reuse off when a separate drafter runs; whether the "
            "published EAGLE-3 run reused blocks is not published",
            _fcfs,
            {"max_batched_tokens": 8192, "max_running": 2048, "enable_prefix_caching": False},
            engine="trtllm",
            tp=4,
        ),
        PolicyProfile(
            "vllm",
            "vLLM-like: FCFS, max_num_batched_tokens=8192, max_num_seqs=1024 (V1 EngineArgs defaults for >=70 GiB "
            "GPUs, API server), block-hash prefix cache, recompute preemption; engine vllm "
            "(gpu_memory_utilization=0.9 of total memory)",
            _fcfs,
            {"max_batched_tokens": 8192, "max_running": 1024},
            engine="vllm",
        ),
        PolicyProfile(
            "prefix-aware",
            "tokensched: longest cached prefix first (FCFS among equals), default budget (8192 tokens per step)",
            _lpm,
        ),
        PolicyProfile(
            "retain",
            "tokensched: longest cached prefix first, and a finished turn's KV kept 10 s for its session's next "
            "turn (session_kv_retention_s=10); default budget (8192 tokens per step)",
            _lpm,
            {"session_kv_retention_s": 10.0},
        ),
        PolicyProfile(
            "slo",
            "tokensched: earliest TTFT deadline first (arrival + ttft_slo_s); requests whose TTFT is met are "
            "preempted first; default budget (8192 tokens per step)",
            _slo,
        ),
    )
}
