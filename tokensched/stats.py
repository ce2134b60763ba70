"""A snapshot of the scheduler's counters, cheap to take and safe to hand out.

The pool balances: ``num_empty_blocks + num_evictable_blocks +
num_held_blocks + num_pending_blocks == num_total_blocks`` (see
:attr:`SchedulerStats.pool_balance`).
"""

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
    num_evictable_blocks: int = 0  # cached, held by nobody: counted in num_free_blocks, evicted last-used first
    num_held_blocks: int = 0  # owned or shared by running requests

    @property
    def num_empty_blocks(self) -> int:
        """Free and holding nothing cached."""
        return self.num_free_blocks - self.num_evictable_blocks

    @property
    def pool_balance(self) -> tuple[int, int, int, int]:
        """(empty, evictable, held, pending): every block is in exactly one, so they sum to the pool size."""
        return (self.num_empty_blocks, self.num_evictable_blocks, self.num_held_blocks, self.num_pending_blocks)

    @property
    def kv_usage(self) -> float:
        """Fraction of blocks that cannot be handed out now."""
        return 1.0 - self.num_free_blocks / self.num_total_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hit_tokens / self.prefix_query_tokens if self.prefix_query_tokens else 0.0
