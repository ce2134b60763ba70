"""The step machine: planned → launched → completed → applied, or launched → failed.

Up to ``max_in_flight`` steps are between planned and applied at once, so a
host can plan step k+1 while step k runs. Results apply strictly in launch
order: a result for any step but the oldest in flight is refused. While a step
is in flight, blocks let go are held PENDING until it completes (see
:mod:`tokensched.machines.blocks`), which is what keeps overlap safe.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from enum import StrEnum

import attrs

from tokensched.errors import IllegalTransition, InvalidRequest
from tokensched.machines.request import Request


class StepState(StrEnum):
    PLANNED = "planned"
    LAUNCHED = "launched"
    COMPLETED = "completed"
    APPLIED = "applied"
    FAILED = "failed"


TRANSITIONS: dict[tuple[str, str], str] = {
    ("planned", "launch"): "launched",
    ("launched", "complete"): "completed",
    ("launched", "fail"): "failed",
    ("completed", "apply"): "applied",
}
# The same table keyed by the states themselves (a StrEnum member hashes and compares as its value), giving
# the target member: a move is one dict look-up, without reading ``.value`` or building a member.
_MOVES: dict[tuple[str, str], StepState] = {key: StepState(target) for key, target in TRANSITIONS.items()}


@attrs.define(slots=True, eq=False)
class Step:
    """What the scheduler remembers of a plan until its result is applied.

    Columns parallel the plan's: the request objects (not ids, so a lookup is
    saved per request), the request epoch when planned (a result for a request
    that left the running set since is stale and dropped), tokens scheduled,
    drafts verified, and whether the request samples.
    """

    step_id: int
    requests: list[Request]
    epochs: list[int]
    num_tokens: list[int]
    num_drafts: list[int]
    samples: list[bool]
    state: StepState = StepState.PLANNED

    def move(self, event: str) -> None:
        target = _MOVES.get((self.state, event))
        if target is None:
            raise IllegalTransition(f"step {self.step_id}", self.state.value, event)
        self.state = target


class StepTracker:
    """The steps in flight, oldest first, and the id of the next one."""

    __slots__ = ("_in_flight", "max_in_flight", "next_step_id")

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._in_flight: deque[Step] = deque()
        self.next_step_id = 0

    def __len__(self) -> int:
        return len(self._in_flight)

    def __iter__(self) -> Iterator[Step]:
        return iter(self._in_flight)

    @property
    def full(self) -> bool:
        return len(self._in_flight) >= self.max_in_flight

    @property
    def newest_step_id(self) -> int | None:
        """The step a block let go now must wait for, or None when nothing is in flight."""
        return self._in_flight[-1].step_id if self._in_flight else None

    def open(self, step: Step) -> None:
        """Record a planned step and launch it (the plan goes to the executor on return)."""
        if self.full:
            raise IllegalTransition(f"step {step.step_id}", "planned", "launch", f"{len(self)} steps in flight")
        if step.step_id != self.next_step_id:
            raise InvalidRequest(f"step ids must be consecutive: expected {self.next_step_id}, got {step.step_id}")
        step.move("launch")
        self._in_flight.append(step)
        self.next_step_id += 1

    def oldest(self, step_id: int, event: str) -> Step:
        """The oldest step in flight, which must be ``step_id`` (results apply in order)."""
        if not self._in_flight:
            raise InvalidRequest(f"{event} for step {step_id}, but no step is in flight")
        step = self._in_flight[0]
        if step.step_id != step_id:
            ids = [s.step_id for s in self._in_flight]
            raise InvalidRequest(f"{event} for step {step_id}, but steps apply in order and {ids} are in flight")
        return step

    def close(self, step: Step) -> None:
        """Drop the oldest step once its result was applied or its failure handled."""
        if not self._in_flight or self._in_flight[0] is not step:
            raise IllegalTransition(f"step {step.step_id}", step.state.value, "close", "not the oldest in flight")
        if step.state not in (StepState.APPLIED, StepState.FAILED):
            raise IllegalTransition(f"step {step.step_id}", step.state.value, "close")
        self._in_flight.popleft()
