"""Achieved fractions of datasheet peaks: the factors that turn a roofline into a step time."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Efficiency(BaseModel):
    """Achieved fractions of datasheet peaks, plus fixed costs: the knobs that calibration fits.

    The defaults are engineering assumptions, not measurements; fit them to a
    real GPU with ``python -m tokensched_sim.calibrate measured.csv``.
    ``matmul``: large GEMMs reach 60-80% of dense peak, grouped MoE GEMMs less.
    ``attention``: FlashAttention-class prefill kernels reach about half of peak.
    ``memory``: streaming kernels reach ~80% of HBM bandwidth.
    ``network``: NCCL all-reduce bus bandwidth vs NVLink per-direction peak.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    matmul: float = Field(default=0.6, gt=0, le=1)
    attention: float = Field(default=0.5, gt=0, le=1)
    memory: float = Field(default=0.8, gt=0, le=1)
    network: float = Field(default=0.7, gt=0, le=1)
    step_overhead_s: float = Field(default=5e-4, ge=0, description="launches, sampling, host sync per step")
    allreduce_latency_s: float = Field(default=8e-6, ge=0, description="fixed latency of one all-reduce")
