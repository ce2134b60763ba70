"""Per-rank memory as each engine divides it: weights, draft, activations, CUDA graphs, runtime, KV cache.

The KV cache is what an engine's rule (:mod:`tokensched_sim.engines`) leaves
after everything else. The other items are estimated from the deployment, each
with its source:

- **runtime** (CUDA context, NCCL buffers, attention metadata): SGLang's own
  reservation for them, 512 MiB + ``tp / 8`` GiB (sglang/srt/server_args.py
  ``_handle_gpu_memory_settings``), used for every engine.
- **activations**: the peak of one step of ``max_num_batched_tokens`` tokens,
  derived from the model: hidden states (4 x ``h`` BF16 values a token), the
  fused-MoE buffers (``k x 2 I_e / tp`` gate-up outputs and a ``k x h`` combine
  buffer a token, as vLLM's and SGLang's fused_moe allocate them), the
  prefill attention's per-rank q, k, v and output, and FP32 logits for
  ``max_num_seqs`` rows.
- **CUDA graphs**: 2 MiB per captured batch size up to the engine's largest
  (SGLang's estimate, ``cuda_graph_max_bs * 2`` MiB), twice with a draft model
  (its own graphs).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

_MIB = 1 << 20
_GIB = 1 << 30
GRAPH_BYTES_PER_BATCH = 2 * _MIB


class DeploymentError(ValueError):
    """A deployment that cannot run: its weights (or the engine's reservations) do not fit the GPUs."""


class MemoryBreakdown(BaseModel):
    """Bytes per GPU rank, as the engine's memory rule divides them (see :meth:`format`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    engine: str
    rule: str
    fraction: float
    num_ranks: int
    attention: str  # "tp" or "dp"
    gpu_bytes: float
    weights: float
    draft: float
    activations: float
    cuda_graphs: float
    runtime: float
    kv: float
    kv_bytes_per_token: float  # per rank, target latent + draft KV
    kv_tokens_per_rank: int

    @property
    def unused(self) -> float:
        """What the rule leaves idle (its safety margin)."""
        return self.gpu_bytes - self.weights - self.draft - self.activations - self.cuda_graphs - self.runtime - self.kv

    @property
    def kv_tokens(self) -> int:
        """Distinct tokens the deployment holds: one rank's worth under attention TP, every rank's under DP."""
        return self.kv_tokens_per_rank * (self.num_ranks if self.attention == "dp" else 1)

    def format(self) -> str:
        """One line: the rule, then each item in GB per rank, then the KV tokens."""
        gb = 1e9
        parts = (
            f"weights {self.weights / gb:.1f}",
            f"draft {self.draft / gb:.1f}",
            f"activations {self.activations / gb:.1f}",
            f"graphs {self.cuda_graphs / gb:.1f}",
            f"runtime {self.runtime / gb:.1f}",
            f"KV {self.kv / gb:.1f}",
            f"unused {self.unused / gb:.1f}",
        )
        scope = f"x{self.num_ranks} ranks (DP attention)" if self.attention == "dp" else "(TP attention)"
        return (
            f"{self.engine} [{self.rule} {self.fraction:.3f}] per rank {self.gpu_bytes / gb:.1f} GB = "
            + ", ".join(parts)
            + f" GB; KV {self.kv_tokens_per_rank:,} tokens/rank {scope} = {self.kv_tokens:,} tokens"
        )


def kv_budget(
    rule: str,
    fraction: float,
    *,
    gpu_bytes: float,
    weights: float,
    draft: float,
    activations: float,
    cuda_graphs: float,
    runtime: float,
) -> tuple[float, float]:
    """``(kv_bytes, shortfall)`` per rank under ``rule``; a positive shortfall means the deployment cannot start.

    ``total_fraction`` (vLLM): ``fraction * total - runtime - weights - draft - activations``; graphs must
    fit the rest. ``static_fraction`` (SGLang): ``fraction * total - runtime - weights``; draft,
    activations and graphs must fit ``(1 - fraction) * total``. ``free_fraction`` (TensorRT-LLM):
    ``fraction * (total - runtime - weights - draft - activations)``; graphs must fit the rest.
    """
    if rule == "total_fraction":
        kv = fraction * gpu_bytes - runtime - weights - draft - activations
        outside = cuda_graphs - (1 - fraction) * gpu_bytes
    elif rule == "static_fraction":
        kv = fraction * gpu_bytes - runtime - weights
        outside = draft + activations + cuda_graphs - (1 - fraction) * gpu_bytes
    elif rule == "free_fraction":
        free = gpu_bytes - runtime - weights - draft - activations
        kv = fraction * free
        if free < 0:
            return kv, -free
        outside = cuda_graphs - (1 - fraction) * free
    else:
        raise ValueError(f"unknown memory rule {rule!r}")
    return kv, max(-kv, outside, 0.0)


def runtime_bytes(tp: int) -> float:
    """CUDA context, NCCL and metadata per rank: SGLang's reservation, 512 MiB + tp/8 GiB."""
    return 512 * _MIB + tp / 8 * _GIB
