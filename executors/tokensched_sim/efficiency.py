"""Achieved fractions of datasheet peaks: the factors that turn a roofline into a step time."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Efficiency(BaseModel):
    """Achieved fractions of datasheet peaks, plus fixed costs: the knobs that calibration fits.

    Sources (none fitted to end-to-end serving results; see docs/sim.md):

    - ``attention`` (BF16): NVIDIA's SM100 FMHA, the dense MHA prefill kernel
      deepseek-ai/FlashMLA ships, "up to 1460 TFlops in forward on B200":
      1460 / 2250 = 0.65. Hopper figures agree: FlashMLA dense MLA decode 660
      TFLOP/s on H800 (0.67), FlashAttention-3 740 TFLOP/s on H100 (0.75,
      arXiv:2407.08608). The engine profiles use 0.65 (Blackwell, the published setup).
    - ``attention_fp8``: FlashAttention-3's FP8 forward, "close to 1.2 PFLOPs/s"
      on H100 (arXiv:2407.08608): 1200 / 1979 = 0.61 of the FP8 peak; the only
      published FP8 attention kernel figure found, applied to Blackwell's FP8 peak.
    - ``memory`` 0.8: an assumption for weight streaming (FlashMLA's memory-bound
      decode reaches 3,000 of 3,350 GB/s, 0.9, on H800; grouped MoE GEMVs less).
    - ``matmul`` 0.6: an assumption (DeepGEMM's FP8 GEMMs reach up to 1,550 of
      1,979 TFLOP/s, 0.78, on H800 for large shapes; grouped MoE GEMMs less).
    - ``network`` 0.7, ``step_overhead_s``, ``allreduce_latency_s``: assumptions.
    - ``layer_overhead_s``: the latency floor of one layer's kernels that no
      roofline term accounts for (launch tails, tiny GEMMs and GEMVs below their
      roofline). Default 0; the engine profiles take it from TensorRT-LLM's
      published minimum-latency DeepSeek-R1 run on 8x B200 (see
      :data:`tokensched_sim.engines.TRTLLM_MIN_LATENCY_LAYER_OVERHEAD_S`).

    Fit them to a real GPU with ``python -m tokensched_sim.calibrate measured.csv``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    matmul: float = Field(default=0.6, gt=0, le=1)
    attention: float = Field(default=0.5, gt=0, le=1)
    attention_fp8: float = Field(default=1200 / 1979, gt=0, le=1, description="of the FP8 peak, FP8 attention")
    memory: float = Field(default=0.8, gt=0, le=1)
    network: float = Field(default=0.7, gt=0, le=1)
    step_overhead_s: float = Field(default=5e-4, ge=0, description="launches, sampling, host sync per step")
    allreduce_latency_s: float = Field(default=8e-6, ge=0, description="fixed latency of one all-reduce")
    layer_overhead_s: float = Field(default=0.0, ge=0, description="latency floor per layer per step")
