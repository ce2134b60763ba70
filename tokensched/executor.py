"""The executor side of the contract: the Protocol, a mirror of request state, discovery.

An executor runs :class:`~tokensched.plan.StepPlan` s in launch order and hands
back :class:`~tokensched.plan.StepResult` s in the same order. Launch and
collect are separate so that a host can plan step k+1 while step k runs.

Executors are plug-ins found through the ``tokensched.executors`` entry-point
group, so ``load_executor("sim")`` works without importing torch.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from types import ModuleType
from typing import Protocol, runtime_checkable

import attrs

from tokensched.config import SamplingParams
from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.errors import InvalidRequest, TokenschedError
from tokensched.int_column import as_list
from tokensched.plan import PLACEHOLDER_TOKEN, StepPlan, StepResult

ENTRY_POINT_GROUP = "tokensched.executors"


@runtime_checkable
class Executor(Protocol):
    """Runs plans. ``block_size`` and ``num_kv_blocks`` size the scheduler's pool."""

    @property
    def block_size(self) -> int: ...

    @property
    def num_kv_blocks(self) -> int: ...

    def launch(self, plan: StepPlan) -> None:
        """Start running ``plan``; must not wait for it to finish."""

    def collect(self) -> StepResult:
        """Wait for the oldest launched step and return its result.

        Raises :class:`~tokensched.errors.ExecutorError` (carrying the step id)
        when that step failed; the next call returns the step after it.
        """

    def now(self) -> float:
        """Seconds on the executor's clock (virtual for the simulator)."""

    def wait_until(self, t: float) -> None:
        """Idle until the clock reads ``t`` (the simulator jumps there)."""


@runtime_checkable
class RunExecutor(Protocol):
    """An executor that can also run several decode steps per call (see :mod:`tokensched.decode_run`)."""

    def launch_run(self, run: DecodeRun, until: float) -> RunResult:
        """Run the steps of ``run`` that start before ``until`` (at least one) and return them all.

        Called with the run's ``launched`` steps in flight. Steps are run while
        :class:`~tokensched.decode_run.RunCursor` allows and start before both
        ``until`` and the run's ``admission_shut_until``, exactly as single
        steps of the same plans would be (tokens, drafts, durations). A run
        with ``cross_blocks`` gets the ids of its new blocks only when it
        completes: an executor that needs them earlier refuses such a run.

        Raises :class:`~tokensched.errors.ExecutorError` when the run failed
        with no step to hand back: the steps in flight at the call are lost
        with it, and none is in flight afterwards (the caller then calls
        :meth:`Scheduler.fail_run <tokensched.scheduler.Scheduler.fail_run>`).
        """


class RunSteps(Protocol):
    """A decode run that its caller steps one call at a time (see :class:`SteppedRunExecutor`)."""

    @property
    def cursor(self) -> RunCursor:
        """The cursor the steps are planned and taken with (what the run did so far: blocks, positions)."""

    def start(self) -> None:
        """Launch the run's first steps (those the run's depth keeps in flight)."""

    def launch_next(self) -> bool:
        """Launch the run's next step if its cursor plans it; False when the run ends before it."""

    def collect(self) -> bool:
        """Collect the oldest step launched (the clock moves to its end); whether the run may go on after it."""

    def result(self) -> RunResult:
        """The steps collected, for ``Scheduler.complete_run``; steps launched after them stay in flight."""


@runtime_checkable
class SteppedRunExecutor(Protocol):
    """An executor whose decode runs a driver can step itself, acting on the clock between the steps.

    For a driver that must pace each step by something outside one
    executor, as the DP-attention lockstep (every rank's step ends when the
    slowest rank's does) in :mod:`tokensched.benchmark.dp_attention`. The
    steps are those :meth:`RunExecutor.launch_run` would run, each launched
    when the driver calls for it, so moving the clock between them gives the
    single steps the driver would have run at those times.
    """

    def begin_run(self, run: DecodeRun) -> RunSteps:
        """``run``, ready to be started and stepped; called with the run's ``launched`` steps in flight."""


class WallClock:
    """Mixin: the real clock, for executors that run on real hardware."""

    def now(self) -> float:
        return time.perf_counter()

    def wait_until(self, t: float) -> None:
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


class VirtualClock:
    """Mixin: a clock that moves only when the executor says so (simulators, test doubles).

    Subclasses advance ``_clock`` as steps complete; ``wait_until`` jumps it
    forward across idle time.
    """

    _clock: float = 0.0

    def now(self) -> float:
        return self._clock

    def wait_until(self, t: float) -> None:
        if t > self._clock:
            self._clock = t


@attrs.define(slots=True)
class MirroredRequest:
    """An executor's copy of one running request, rebuilt from plans and results."""

    request_id: str
    token_ids: list[int]  # prompt, then every output token the executor has seen accepted
    block_ids: list[int]
    sampling: SamplingParams
    num_prompt_tokens: int


class RequestMirror:
    """Keeps per-request block tables and token histories from compact plans.

    Call :meth:`begin` with each plan before running it (drops removed
    requests, adds new ones, applies block-table deltas and returns the plan's
    tokens with placeholders resolved), and :meth:`finish` with the result you
    are about to return (appends accepted tokens so the next placeholder
    resolves).
    """

    def __init__(self) -> None:
        self.requests: dict[str, MirroredRequest] = {}

    def begin(self, plan: StepPlan) -> list[int]:
        requests = self.requests
        for request_id in plan.removed_request_ids:
            requests.pop(request_id, None)
        for new in plan.new_requests:
            tokens = list(new.token_ids)
            requests[new.request_id] = MirroredRequest(
                request_id=new.request_id,
                token_ids=tokens,
                block_ids=list(new.block_ids),
                sampling=new.sampling,
                num_prompt_tokens=len(tokens) - new.num_output_tokens,
            )
        for request_id, length in plan.truncated_block_tables.items():
            del requests[request_id].block_ids[length:]
        tokens = as_list(plan.token_ids)
        resolved: list[int] | None = None
        offsets = plan.token_offsets
        for i, request_id in enumerate(plan.request_ids):
            try:
                mirrored = requests[request_id]
            except KeyError:
                raise InvalidRequest(f"step {plan.step_id}: request {request_id!r} was never sent in full") from None
            new_blocks = plan.new_block_ids[i]
            if new_blocks:
                mirrored.block_ids.extend(new_blocks)
            lo = offsets[i]
            if tokens[lo] == PLACEHOLDER_TOKEN:
                if resolved is None:
                    resolved = list(tokens)
                resolved[lo] = mirrored.token_ids[-1]
        return tokens if resolved is None else resolved

    def finish(self, plan: StepPlan, result: StepResult) -> None:
        requests = self.requests
        for request_id, sampled in zip(plan.request_ids, result.sampled_token_ids, strict=True):
            if sampled:
                requests[request_id].token_ids.extend(sampled)

    def block_table(self, request_id: str) -> Sequence[int]:
        return self.requests[request_id].block_ids


def available_executors() -> list[str]:
    """Names registered under the ``tokensched.executors`` entry-point group."""
    return sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))


def load_executor(name: str) -> type:
    """The executor class registered as ``name`` (imports its package only now)."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            loaded = ep.load()
            if not isinstance(loaded, type):
                raise TokenschedError(f"entry point {name!r} does not name a class: {loaded!r}")
            return loaded
    raise TokenschedError(f"no executor named {name!r}; installed: {', '.join(available_executors()) or 'none'}")


def executor_package(name: str) -> ModuleType:
    """The package of the executor registered as ``name``, for its own config types.

    tokensched never imports an executor by name (executors depend on it, not
    the reverse); callers that need, say, the simulator's ``Deployment`` beside
    its executor class take it from the package its entry point names.
    """
    return importlib.import_module(load_executor(name).__module__.partition(".")[0])
