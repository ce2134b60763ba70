"""The configuration of one benchmark run (validated at the edge, pydantic)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.workloads import Arrivals, CodingAgentConfig


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
