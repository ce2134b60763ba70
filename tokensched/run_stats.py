"""The scheduler's stats as single steps would have shown them between the steps of an applied decode run.

Why: a driver that reads the scheduler's stats now and then (the bench
samples the queue and the KV pool every simulated second) had to end a run
wherever a reading fell, and a run that ends early costs a replay, an apply
and a new plan for nothing: about 6% of a single-engine simulated hour. Inside
a run only the pool moves (no request is admitted, preempted or submitted,
and a row finishes only in the run's last step), so what a reading after one
of its steps would have shown is the stats at the run's start with the pool's
counts after that step: :meth:`Scheduler.complete_run
<tokensched.scheduler.Scheduler.complete_run>` notes the counts as it applies
each step (after the step's completion, before the plan that single steps
make next), and :class:`RunStats` builds the stats of a step when asked.
``tests/property/test_fast_path.py`` compares them with single steps' stats
after every step of every run.
"""

from __future__ import annotations

import attrs

from tokensched.errors import InvalidRequest
from tokensched.stats import SchedulerStats


@attrs.frozen(slots=True)
class RunStats:
    """What :meth:`Scheduler.stats` would have returned after each step of a run applied in bulk, had it run singly.

    ``counters`` are the stats that no step inside a run moves, as they stood
    when the run's result was applied (running, waiting, prefix hit and query
    tokens, preemptions, finished, aborted, failed steps); ``pools[j]`` the
    pool's free, evictable and pending blocks after step ``j``;
    ``first_step_id`` and ``depth`` the run's (by then the steps up to
    ``j + depth - 1`` are planned). A run's last step, when it finished a
    row, is applied as a single step and has no entry: after it the
    scheduler's own :meth:`~tokensched.scheduler.Scheduler.stats` is the
    answer, as it is after the last step of any run.
    """

    counters: tuple[int, int, int, int, int, int, int, int]
    pools: list[tuple[int, int, int]]
    num_total_blocks: int
    first_step_id: int
    depth: int

    def __len__(self) -> int:
        return len(self.pools)

    def after(self, j: int) -> SchedulerStats:
        """The stats after the run's step ``j`` (0 <= j < len(self)), as the single steps would have left them."""
        if not 0 <= j < len(self.pools):
            raise InvalidRequest(f"run from step {self.first_step_id}: no stats after its step {j}")
        free, evictable, pending = self.pools[j]
        running, waiting, hits, queries, preemptions, finished, aborted, failed = self.counters
        total = self.num_total_blocks
        return SchedulerStats(
            num_running=running,
            num_waiting=waiting,
            num_steps_in_flight=self.depth - 1,
            num_free_blocks=free,
            num_pending_blocks=pending,
            num_total_blocks=total,
            prefix_hit_tokens=hits,
            prefix_query_tokens=queries,
            num_preemptions=preemptions,
            num_finished=finished,
            num_aborted=aborted,
            num_failed_steps=failed,
            num_steps=self.first_step_id + j + self.depth,
            num_evictable_blocks=evictable,
            num_held_blocks=total - free - pending,
        )
