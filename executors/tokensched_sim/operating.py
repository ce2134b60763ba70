"""Steady decode operating points: per-user speed against throughput per GPU, for comparing deployment shapes.

A decode batch of ``B`` requests at ``context`` tokens each, speculating ``k``
drafts with per-draft acceptance ``alpha``, produces ``L = 1 + alpha + ... + alpha^k``
tokens per request per step; one step takes the target's verification plus the
draft head's ``k`` passes. So a user sees ``L / step`` tokens/s and each GPU
serves ``B L / (step tp)``. Sweeping ``B`` (as far as the KV cache holds the
batch: all of it on every rank under attention TP, ``B / tp`` per rank under DP
attention) traces the TPS/user vs TPM/GPU frontier the published comparisons
plot; :func:`best_at_speed` picks the highest throughput at or above a speed.

Prefill is left out (it is the same work for every shape up to the
communication pattern), so these are decode-phase figures, not end-to-end ones.
"""

from __future__ import annotations

import math

import attrs

from tokensched_sim.cost import CostModel
from tokensched_sim.draft import mean_accepted_length
from tokensched_sim.shape import BatchShape


@attrs.frozen(slots=True)
class OperatingPoint:
    batch: int
    step_s: float
    tps_per_user: float
    tokens_per_s_per_gpu: float

    @property
    def tpm_per_gpu(self) -> float:
        return self.tokens_per_s_per_gpu * 60


def max_batch(model: CostModel, context: int) -> int:
    """The most requests of ``context`` tokens the KV cache holds at once (0 if not even one)."""
    per_rank = model.num_kv_tokens // max(context, 1)
    return per_rank * model.deployment.tp if model.deployment.attention == "dp" else per_rank


def decode_point(model: CostModel, batch: int, context: int, acceptance_rate: float) -> OperatingPoint:
    """Speed and throughput of ``batch`` decodes at ``context`` tokens (with the deployment's drafts)."""
    k = model.num_speculative_tokens
    shape = BatchShape.from_counts(
        num_decode_requests=batch, decode_context_tokens=batch * context, num_speculative_tokens=k
    )
    step = model.step_time(shape) + model.draft_time(batch, batch * (context + k + 1), k)
    per_user = mean_accepted_length(acceptance_rate, k) / step
    return OperatingPoint(batch, step, per_user, batch * per_user / model.deployment.tp)


def frontier(model: CostModel, context: int, acceptance_rate: float, limit: int = 2048) -> list[OperatingPoint]:
    """Operating points for batch sizes 1, 2, ... up to what the KV cache holds (at most ``limit``)."""
    top = min(max_batch(model, context), limit)
    sizes = sorted({1, top} | {round(1.15**i) for i in range(int(math.log(max(top, 1), 1.15)) + 1)})
    return [decode_point(model, b, context, acceptance_rate) for b in sizes if 1 <= b <= top]


def best_at_speed(
    model: CostModel, context: int, min_tps_per_user: float, acceptance_rate: float
) -> OperatingPoint | None:
    """The highest-throughput operating point whose per-user speed is at least ``min_tps_per_user``."""
    fast = [p for p in frontier(model, context, acceptance_rate) if p.tps_per_user >= min_tps_per_user]
    return max(fast, key=lambda p: p.tokens_per_s_per_gpu, default=None)
