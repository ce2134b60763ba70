"""Serving-engine profiles: how each engine sizes its KV cache, and the kernels it runs.

Engines do not agree on what "memory for the KV cache" means, and on a node where
~600 GB of weights fill ~770 GB of HBM the difference is the whole cache:

- **vLLM** (``total_fraction``): ``gpu_memory_utilization`` (default 0.9) of the
  device's *total* memory is the budget for weights, peak activations and KV;
  the KV cache gets what a profiling forward pass leaves of it
  (vllm/v1/worker/gpu_worker.py ``determine_available_memory``; default in
  vllm/config ``CacheConfig.gpu_memory_utilization = 0.9``). CUDA graphs are
  captured afterwards, in the remaining 10%.
- **SGLang** (``static_fraction``): ``mem_fraction_static`` of total memory holds
  weights + KV pool; the KV pool is ``free memory after loading weights - total *
  (1 - mem_fraction_static)`` (sglang/srt/model_executor/model_runner.py
  ``profile_max_num_token``). When the user does not set it, server_args.py
  ``_handle_gpu_memory_settings`` derives it from the GPU's memory and TP degree:
  see :func:`sglang_memory_settings`. Draft weights, activations and CUDA graphs
  live in the reserved ``1 - mem_fraction_static``.
- **TensorRT-LLM** (``free_fraction``): ``KvCacheConfig.free_gpu_memory_fraction``
  (default 0.9) of the memory still *free after* the weights and a profiling
  forward pass (tensorrt_llm/llmapi/llm_args.py ``KvCacheConfig``;
  tensorrt_llm/_torch/pyexecutor/_util.py ``KvCacheCreator``). CUDA graphs are
  captured afterwards, in the remaining 10% of free memory.
- **tokensched** (``free_fraction``, 0.9): this project's own default, chosen equal
  to TensorRT-LLM's rule so that comparisons with that profile isolate scheduling.

Activation workspace is sized from each engine's token budget per step
(:attr:`EngineSpec.max_num_batched_tokens`), CUDA-graph pools from the largest
captured batch (:attr:`EngineSpec.cuda_graph_max_batch`); see :mod:`tokensched_sim.memory`.

Kernel efficiencies (:class:`~tokensched_sim.cost.Efficiency`) per engine cite the
published benchmark of the attention kernels that engine uses on Blackwell; where
engines use the same NVIDIA kernels they get the same figure (nothing is fitted to
the end-to-end table the simulator is validated against).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tokensched_sim.efficiency import Efficiency

MemoryRule = Literal["total_fraction", "static_fraction", "free_fraction"]
EngineName = Literal["vllm", "sglang", "trtllm", "tokensched"]

_MIB = 1 << 20

# Attention efficiency from published kernel benchmarks (achieved / dense datasheet peak):
# - NVIDIA's SM100 FMHA (the dense MHA prefill kernel FlashMLA ships, "up to 1460 TFlops in forward on B200,
#   as reported by NVIDIA"; deepseek-ai/FlashMLA README): 1460 / 2250 = 0.649.
# - FlashMLA dense MLA decode on H800 SXM5: 660 TFLOP/s compute-bound (/ 989.5 = 0.667) and 3,000 GB/s
#   memory-bound (/ 3,350 = 0.896) (deepseek-ai/FlashMLA README, 2025-04-22 update).
B200_FMHA_ATTENTION = 1460 / 2250
H800_FLASHMLA_DECODE = 660 / 989.5

# The per-layer latency floor, from TensorRT-LLM's published minimum-latency run (NVIDIA TensorRT-LLM tech blog 1,
# "Pushing Latency Boundaries: Optimizing DeepSeek-R1 Performance on NVIDIA B200 GPUs", table "Autoregressive MTP
# Layers": 111 TPS/user without MTP): DeepSeek-R1 (NVFP4 experts, BF16 attention) on 8x B200 at TP8, batch 1,
# ISL 1k / OSL 2k, i.e. one decode step in 1/111 s at ~2k tokens of context. The roofline of that step with the
# efficiencies below is 2.17 ms; the remaining 6.84 ms over 61 layers is the floor. Derived once, re-derived by
# tests/sim/test_engines.py; a different engine or GPU has its own floor, which this does not claim to know.
TRTLLM_MIN_LATENCY_TPS_PER_USER = 111
TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S = 112.06e-6


class EngineSpec(BaseModel):
    """What the simulator needs to know about a serving engine: its memory rule and kernel efficiencies."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    memory_rule: MemoryRule
    memory_fraction: float | None = Field(
        default=None, gt=0, le=1, description="the rule's fraction; None: derived per GPU/TP (SGLang)"
    )
    max_num_batched_tokens: int | None = Field(
        default=None, ge=1, description="tokens per step the activation profile covers; None: derived per GPU"
    )
    max_num_seqs: int = Field(ge=1, description="sequences per step (sizes the FP32 logits buffer)")
    cuda_graph_max_batch: int | None = Field(
        default=None, ge=0, description="largest captured decode batch; None: derived per GPU"
    )
    attention_dtype: Literal["bf16", "fp8"] = "bf16"
    mixed_batches: bool = Field(
        default=True,
        description="prefill chunks and decodes share one forward pass; False: a step holding both runs them as "
        "two passes (SGLang's default, enable_mixed_chunk=False, and forced off with EAGLE)",
    )
    efficiency: Efficiency = Efficiency()
    source: str = ""


def sglang_vlm_factor(vision_num_layers: int, vision_hidden_size: int) -> float:
    """What SGLang multiplies ``mem_fraction_static`` by for a multimodal model (1.0 for text-only).

    Mirrors sglang/srt/server_args.py ``adjust_mem_fraction_for_vlm``, which
    ``_handle_gpu_memory_settings`` calls when the model is multimodal
    (``KimiK25ForConditionalGeneration`` is in model_config.py's multimodal
    architectures) and the user did not set the fraction: a base 0.95, times
    ``1 - 0.1 * (ratio - 1)`` clamped to [0.8, 1.05], where ``ratio`` is the ViT's
    ``layers * hidden^2`` over ViT-L/14's ``24 * 1024^2``. It is a reservation for the
    vision encoder's activations, taken whether or not a request carries an image.
    """
    if not vision_num_layers or not vision_hidden_size:
        return 1.0
    ratio = vision_num_layers * vision_hidden_size**2 / (24 * 1024**2)
    return 0.95 * max(0.8, min(1.05, 1.0 - 0.1 * (ratio - 1.0)))


def sglang_memory_settings(
    gpu_memory_bytes: float,
    tp: int,
    *,
    speculative: bool,
    dp_attention: bool = False,
    vlm_factor: float = 1.0,
) -> tuple[float, int, int]:
    """``(mem_fraction_static, chunked_prefill_size, cuda_graph_max_bs)`` as SGLang's server_args picks them.

    Mirrors sglang/srt/server_args.py ``_handle_gpu_memory_settings`` (reserved
    memory in MiB: 512 constant + 1.5 per chunked-prefill token + 2 per captured
    batch + ``tp / 8 * 1024``, + 3 per captured batch per DP rank with DP
    attention, at least 10 GiB on GPUs over 60 GiB, + 2 GiB for an EAGLE draft;
    the fraction is ``round((gpu - reserved) / gpu, 3)``). Buckets by the GPU's
    MiB: < 90 GiB (H100) and < 160 GiB (H200): 8k chunks, 512 graphs at TP >= 4 (256
    below); larger (B200): 16k chunks, 512 graphs. A multimodal model's fraction is then
    multiplied by ``vlm_factor`` (:func:`sglang_vlm_factor`), unrounded, as SGLang does.
    """
    gpu_mib = gpu_memory_bytes / _MIB
    if gpu_mib < 35 * 1024:
        chunk, graphs = 2048, 24 if tp < 4 else 80
    elif gpu_mib < 60 * 1024:
        chunk, graphs = 4096, 32 if tp < 4 else 160
    elif gpu_mib < 160 * 1024:
        chunk, graphs = 8192, 256 if tp < 4 else 512
    else:
        chunk, graphs = 16384, 512
    reserved = 512 + max(chunk, 2048) * 1.5 + graphs * 2 + tp / 8 * 1024
    if dp_attention:
        reserved += graphs * tp * 3 + (graphs * tp * 1.5 if graphs > 300 else 0)
    if gpu_mib > 60 * 1024:
        reserved = max(reserved, 10 * 1024)
    if speculative:
        reserved += 2 * 1024
    return round((gpu_mib - reserved) / gpu_mib, 3) * vlm_factor, chunk, graphs


_SHARED_EFFICIENCY = Efficiency(attention=B200_FMHA_ATTENTION, layer_overhead_s=TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S)

ENGINES: dict[str, EngineSpec] = {
    "vllm": EngineSpec(
        name="vLLM-like",
        memory_rule="total_fraction",
        memory_fraction=0.9,
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
        cuda_graph_max_batch=512,
        efficiency=_SHARED_EFFICIENCY,
        source=(
            "vLLM v1: CacheConfig.gpu_memory_utilization=0.9; EngineArgs defaults for >=70 GiB GPUs in the API "
            "server: max_num_batched_tokens=8192, max_num_seqs=1024; CompilationConfig max cudagraph capture "
            "size 512. MLA on Blackwell via FlashInfer/CUTLASS (NVIDIA) kernels: B200 FMHA 1460/2250 TFLOP/s."
        ),
    ),
    "sglang": EngineSpec(
        name="SGLang-like",
        memory_rule="static_fraction",
        max_num_seqs=1024,
        mixed_batches=False,
        efficiency=_SHARED_EFFICIENCY,
        source=(
            "SGLang ServerArgs.enable_mixed_chunk=False (prefill and decode batches run as separate forward passes; "
            "_handle_speculative_decoding also forces it off with EAGLE); "
            "SGLang server_args._handle_gpu_memory_settings (mem_fraction_static, chunked_prefill_size, "
            "cuda_graph_max_bs by GPU memory and TP); model_runner.profile_max_num_token (KV = free after weights "
            "- total * (1 - mem_fraction_static)). Default MLA backend on SM100 is trtllm_mla (NVIDIA kernels)."
        ),
    ),
    "trtllm": EngineSpec(
        name="TensorRT-LLM-like",
        memory_rule="free_fraction",
        memory_fraction=0.9,
        max_num_batched_tokens=8192,
        max_num_seqs=2048,
        cuda_graph_max_batch=128,
        attention_dtype="fp8",
        efficiency=_SHARED_EFFICIENCY,
        source=(
            "TensorRT-LLM LLM API: KvCacheConfig.free_gpu_memory_fraction=0.9 of memory free after weights and "
            "the profiling pass; BuildConfig max_num_tokens=8192, max_batch_size=2048; CudaGraphConfig "
            "max_batch_size=128. FP8 context FMHA with an FP8 KV cache (trtllm-gen kernels on Blackwell)."
        ),
    ),
    "tokensched": EngineSpec(
        name="tokensched",
        memory_rule="free_fraction",
        memory_fraction=0.9,
        max_num_batched_tokens=8192,
        max_num_seqs=1024,
        cuda_graph_max_batch=512,
        efficiency=_SHARED_EFFICIENCY,
        source="this project's default: TensorRT-LLM's memory rule, vLLM's batch limits, the same NVIDIA kernels",
    ),
}


def engine_preset(name: str) -> EngineSpec:
    """An engine profile by name (``vllm``, ``sglang``, ``trtllm``, ``tokensched``)."""
    try:
        return ENGINES[name.lower()]
    except KeyError:
        raise ValueError(f"no engine profile {name!r}; known: {', '.join(ENGINES)}") from None
