"""Read-only views of the scheduler's state for callers: what a request is doing, why plan() said no.

The scheduler's own :class:`~tokensched.machines.request.Request` objects are
mutable and change every step; callers get snapshots instead, so reading the
state can never corrupt it.
"""

from __future__ import annotations

from enum import StrEnum

import attrs

from tokensched.machines.request import Decoding, Prefilling, Request, state_name


class PlanOutcome(StrEnum):
    """What the latest ``Scheduler.plan()`` did (``Scheduler.last_plan_outcome``)."""

    PLANNED = "planned"  # it returned a step
    IDLE = "idle"  # nothing is running or waiting
    WINDOW_FULL = "window_full"  # max_steps_in_flight steps are in flight: complete() the oldest first
    BLOCKED = "blocked"  # requests are live but none can be scheduled until a step in flight completes


@attrs.frozen(slots=True)
class RequestView:
    """A snapshot of one live request."""

    request_id: str
    state: str  # "waiting", "prefilling", "decoding", "preempted"
    priority: int
    session_id: str | None
    arrival_time: float
    num_prompt_tokens: int
    num_output_tokens: int
    num_computed_tokens: int  # tokens with KV from applied results (0 while waiting)
    num_cached_tokens: int  # served from the prefix cache at its latest admission
    num_blocks: int  # KV blocks in its table (0 while waiting)
    num_preemptions: int
    first_token_time: float | None

    @classmethod
    def of(cls, request: Request) -> RequestView:
        state = request.state
        active = type(state) is Prefilling or type(state) is Decoding
        return cls(
            request_id=request.request_id,
            state=state_name(state),
            priority=request.priority,
            session_id=request.session_id,
            arrival_time=request.arrival_time,
            num_prompt_tokens=request.num_prompt_tokens,
            num_output_tokens=request.num_output_tokens,
            num_computed_tokens=state.num_computed if active else 0,  # type: ignore[union-attr]
            num_cached_tokens=request.num_cached_tokens,
            num_blocks=len(state.blocks) if active else 0,  # type: ignore[union-attr]
            num_preemptions=request.num_preemptions,
            first_token_time=request.first_token_time,
        )
