"""The configuration of one benchmark run (validated at the edge, pydantic)."""

from __future__ import annotations

from typing import Literal

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
    num_speculative_tokens: int = Field(
        default=3, ge=0, le=16, description="EAGLE drafts per step (3: the published Kimi EAGLE-3 head's steps)"
    )
    spec_accept_length: float = Field(
        default=2.54,
        ge=1.0,
        description="mean tokens per verification, bonus included (2.54: HumanEval accept length of the "
        "Kimi-K2.7-Code EAGLE-3.1 head with 3 drafts, lightseekorg/kimi-k2.7-coder-eagle3.1-mla model card)",
    )
    turns: Literal["open", "closed"] = Field(
        default="open", description="open: turns on a fixed timeline (offered load = label); closed: after answers"
    )
    workload: CodingAgentConfig = CodingAgentConfig()
    host_kv_gb: float = Field(
        default=0.0, ge=0.0, description="host memory for the KV tier per replica, GB (0: no host tier)"
    )
    host_link: Literal["pcie5-x16", "nvlink-c2c"] = Field(
        default="pcie5-x16", description="GPU-host link the tier's copies take (tokensched_sim.transfer)"
    )

    @model_validator(mode="after")
    def _consistent(self) -> BenchConfig:
        if (self.target_tpm is None) == (self.concurrency is None):
            raise ValueError("set exactly one of target_tpm and concurrency")
        if self.warmup_s >= self.duration_s:
            raise ValueError(f"warmup_s={self.warmup_s} leaves nothing of duration_s={self.duration_s} to measure")
        if self.policy not in PROFILES:
            raise ValueError(f"unknown policy {self.policy!r}; known: {', '.join(PROFILES)}")
        if self.num_speculative_tokens and self.spec_accept_length > self.num_speculative_tokens + 1:
            raise ValueError(
                f"spec_accept_length={self.spec_accept_length} exceeds what {self.num_speculative_tokens} drafts "
                f"can give ({self.num_speculative_tokens + 1} tokens per verification)"
            )
        return self

    @property
    def num_gpus(self) -> int:
        """GPUs of the deployment: the profile's TP if it names one, else ``tp``."""
        return PROFILES[self.policy].tp or self.tp

    @property
    def arrivals(self) -> Arrivals:
        return Arrivals(target_tpm=self.target_tpm, concurrency=self.concurrency, turns=self.turns)
