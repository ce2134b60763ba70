"""The bench's host KV tier: sizing it from ``BenchConfig.host_kv_gb`` and finding where TTFT crosses a target.

Host slots hold one block each at the size a rank's KV block takes
(``SimExecutor.transfers.block_bytes``: MLA's latent is whole on every rank,
so a replica keeps one host copy that every rank loads from over its own
link). The per-step transfer budget is set to a whole context's blocks, so a
returning session's prefix loads in the step that admits it; the simulator
prices the copies and overlaps them with compute (``tokensched_sim.transfer``),
so a large load lengthens its step rather than being free.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from tokensched.benchmark.config import BenchConfig


def host_kv_blocks(config: BenchConfig, block_bytes: float) -> int:
    """Host slots that ``config.host_kv_gb`` holds at ``block_bytes`` a block."""
    return int(config.host_kv_gb * 1e9 // block_bytes) if config.host_kv_gb > 0 else 0


def host_tier_settings(config: BenchConfig, executor: Any) -> dict[str, Any]:
    """SchedulerConfig fields for the host tier of ``config`` beside the sim ``executor`` (empty: none)."""
    blocks = host_kv_blocks(config, executor.transfers.block_bytes)
    if not blocks:
        return {}
    per_context = math.ceil(config.workload.max_context_tokens / config.block_size)
    return {"host_kv_blocks": blocks, "host_transfer_blocks": max(1, per_context)}


def crossing(levels: Sequence[float], values: Sequence[float], threshold: float) -> float | None:
    """The first load at which ``values`` reach ``threshold``, linearly interpolated between levels.

    None when no level reaches it; the lowest level when it is already reached there; a level whose
    value is infinite (no steady-state figure) crosses at that level.
    ``levels`` must be increasing.
    """
    if len(levels) != len(values) or any(b <= a for a, b in itertools.pairwise(levels)):
        raise ValueError("levels must increase and match values one to one")
    for i, (level, value) in enumerate(zip(levels, values, strict=True)):
        if value >= threshold:
            if i == 0 or not math.isfinite(value):  # no p50 to interpolate to (overloaded): by this level
                return level
            lo, v0 = levels[i - 1], values[i - 1]
            return lo + (threshold - v0) / (value - v0) * (level - lo)
    return None
