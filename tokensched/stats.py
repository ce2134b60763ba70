"""A snapshot of the scheduler's counters, cheap to take and safe to hand out."""

from __future__ import annotations

import attrs


@attrs.frozen(slots=True)
class SchedulerStats:
    num_running: int
    num_waiting: int
    num_steps_in_flight: int
    num_free_blocks: int  # free or evictable: can be handed out now
    num_pending_blocks: int  # held for a step in flight
    num_total_blocks: int
    prefix_hit_tokens: int  # served from the prefix cache, summed over admissions
    prefix_query_tokens: int  # tokens to compute at admission, summed
    num_preemptions: int
    num_finished: int
    num_aborted: int
    num_failed_steps: int
    num_steps: int

    @property
    def kv_usage(self) -> float:
        """Fraction of blocks that cannot be handed out now."""
        return 1.0 - self.num_free_blocks / self.num_total_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0
