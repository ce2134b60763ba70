"""The request machine and the StepTracker under random events, legal and illegal.

The request machine is driven with every event towards every state; the
model of what is legal is ``specs/request.toml`` itself, so this also checks
the code against the spec at run time. Illegal events must raise
IllegalTransition and leave the machine exactly as it was.
"""

from __future__ import annotations

import os

import attrs
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tokensched.config import RequestSpec
from tokensched.errors import IllegalTransition, InvalidRequest
from tokensched.machines.request import (
    STATE_NAMES,
    Request,
    RequestState,
    held_blocks,
    state_name,
    transition,
)
from tokensched.machines.spec import load_spec
from tokensched.machines.step import Step, StepState, StepTracker
from tokensched.plan import FinishReason

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
REQUEST_SPEC = load_spec("request")
STEP_SPEC = load_spec("step")
CLASSES = {name: cls for cls, name in STATE_NAMES.items()}


def make_state(name: str, blocks: list[int], reason: FinishReason) -> RequestState:
    cls = CLASSES[name]
    values = {"blocks": blocks, "reason": reason}
    state: RequestState = cls(**{f.name: values.get(f.name, len(blocks)) for f in attrs.fields(cls)})
    return state


class RequestMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0
        self.new_request()

    @rule()
    def new_request(self) -> None:
        self.request = Request.from_spec(RequestSpec(request_id=f"r{self.count}", prompt_token_ids=[1]), 0.0, 0)
        self.count += 1
        self.model = REQUEST_SPEC.initial
        self.blocks: list[int] = []

    @rule(
        event=st.sampled_from([*REQUEST_SPEC.events, "unknown_event"]),
        to=st.sampled_from(list(REQUEST_SPEC.states)),
        blocks=st.lists(st.integers(0, 99), max_size=3, unique=True),
        reason=st.sampled_from(FinishReason),
    )
    def fire(self, event: str, to: str, blocks: list[int], reason: FinishReason) -> None:
        before = self.request.state
        new_state = make_state(to, blocks, reason)
        expected = REQUEST_SPEC.table().get((self.model, event))
        if expected == to:
            transition(self.request, event, new_state)
            assert self.request.state is new_state
            self.model = to
            self.blocks = blocks if "blocks" in REQUEST_SPEC.states[to].owns else []
            return
        try:
            transition(self.request, event, new_state)
            raise AssertionError(f"{self.model} --{event}--> {to} was accepted")
        except IllegalTransition as e:
            assert (e.state, e.event) == (self.model, event)
            assert self.request.request_id in e.subject
        assert self.request.state is before, "a refused event changed the request"

    @invariant()
    def state_matches_model(self) -> None:
        assert state_name(self.request.state) == self.model
        assert self.request.is_finished == (self.model in REQUEST_SPEC.terminal)

    @invariant()
    def only_states_that_own_blocks_hold_them(self) -> None:
        assert held_blocks(self.request.state) == self.blocks


TestRequestMachine = RequestMachine.TestCase
TestRequestMachine.settings = SETTINGS


class StepTrackerMachine(RuleBasedStateMachine):
    """Steps open in id order up to ``max_in_flight`` and retire oldest first; anything else is refused."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = StepTracker(1)
        self.model: list[Step] = []  # in flight, oldest first
        self.retired = 0

    @initialize(max_in_flight=st.integers(1, 4))
    def make_tracker(self, max_in_flight: int) -> None:
        self.tracker = StepTracker(max_in_flight)

    def snapshot(self) -> tuple[object, ...]:
        return tuple((s.step_id, s.state) for s in self.tracker), self.tracker.next_step_id

    def new_step(self, step_id: int) -> Step:
        return Step(step_id, [], [], [], [], [])

    @rule(offset=st.sampled_from([0, 0, 0, -1, 1, 5]))
    def open_step(self, offset: int) -> None:
        step = self.new_step(self.tracker.next_step_id + offset)
        before = self.snapshot()
        if len(self.model) >= self.tracker.max_in_flight:
            try:
                self.tracker.open(step)
                raise AssertionError("opened a step beyond max_in_flight")
            except IllegalTransition as e:
                assert (e.state, e.event) == ("planned", "launch")
        elif offset:
            try:
                self.tracker.open(step)
                raise AssertionError(f"opened step {step.step_id} out of order")
            except InvalidRequest:
                pass
        else:
            self.tracker.open(step)
            assert step.state is StepState.LAUNCHED
            self.model.append(step)
            return
        assert self.snapshot() == before and step.state is StepState.PLANNED

    @precondition(lambda self: self.model)
    @rule(which=st.integers(0, 3), event=st.sampled_from(["complete", "fail"]))
    def result_arrives(self, which: int, event: str) -> None:
        """A result (or failure) is accepted for the oldest step only."""
        oldest = self.model[0]
        step_id = oldest.step_id + which
        before = self.snapshot()
        if which:
            try:
                self.tracker.oldest(step_id, event)
                raise AssertionError(f"{event} accepted for step {step_id}, not the oldest {oldest.step_id}")
            except InvalidRequest:
                assert self.snapshot() == before
            return
        step = self.tracker.oldest(step_id, event)
        assert step is oldest
        self.move(step, event)

    @precondition(lambda self: self.model)
    @rule(event=st.sampled_from([*STEP_SPEC.events, "close"]))
    def move_oldest(self, event: str) -> None:
        """Any event on the oldest step: legal ones per the spec move it, others raise and change nothing."""
        self.move(self.model[0], event)

    def move(self, step: Step, event: str) -> None:
        target = STEP_SPEC.table().get((step.state.value, event))
        before = self.snapshot()
        if target is None:
            try:
                step.move(event)
                raise AssertionError(f"{event} accepted in state {step.state.value}")
            except IllegalTransition as e:
                assert (e.state, e.event) == (step.state.value, event)
            assert self.snapshot() == before
        else:
            step.move(event)
            assert step.state.value == target

    @precondition(lambda self: self.model)
    @rule(which=st.integers(0, 3))
    def close(self, which: int) -> None:
        step = self.model[min(which, len(self.model) - 1)]
        before = self.snapshot()
        if step is self.model[0] and step.state in (StepState.APPLIED, StepState.FAILED):
            self.tracker.close(step)
            self.model.pop(0)
            self.retired += 1
            return
        try:
            self.tracker.close(step)
            raise AssertionError(f"closed step {step.step_id} in state {step.state.value}")
        except IllegalTransition:
            assert self.snapshot() == before

    @invariant()
    def in_flight_matches_model(self) -> None:
        assert list(self.tracker) == self.model
        assert len(self.tracker) <= self.tracker.max_in_flight
        assert self.tracker.full == (len(self.model) == self.tracker.max_in_flight)
        ids = [s.step_id for s in self.model]
        assert ids == list(range(self.retired, self.retired + len(ids))), f"steps in flight {ids}"
        assert self.tracker.next_step_id == self.retired + len(ids)
        assert self.tracker.newest_step_id == (ids[-1] if ids else None)

    @invariant()
    def only_the_oldest_can_be_past_launched(self) -> None:
        for step in self.model[1:]:
            assert step.state is StepState.LAUNCHED, f"step {step.step_id} is {step.state.value} behind the oldest"


TestStepTracker = StepTrackerMachine.TestCase
TestStepTracker.settings = SETTINGS
