"""One small hierarchy of errors, all under :class:`TokenschedError`.

Every error raised through the public API leaves the scheduler exactly as it was
before the call: validation happens before any state moves, so a caller can
catch, log and carry on.
"""

from __future__ import annotations


class TokenschedError(Exception):
    """Base class of every error tokensched raises on purpose."""


class InvalidRequest(TokenschedError, ValueError):
    """A request or step result that can never be accepted as given.

    Empty prompt, prompt + max_tokens over ``max_model_len``, duplicate id,
    bad sampling parameters, a step result that does not match its plan.
    """


class UnknownRequest(TokenschedError, KeyError):
    """An id that names no live request (never submitted, or already finished)."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else "unknown request"


class IllegalTransition(TokenschedError):
    """An event applied to a machine in a state that has no transition for it.

    The message names the machine's subject (request id, block id or step id),
    the state it was in and the event that was refused; nothing was changed.
    """

    def __init__(self, subject: str, state: str, event: str, detail: str = "") -> None:
        self.subject = subject
        self.state = state
        self.event = event
        message = f"{subject}: event {event!r} is illegal in state {state!r}"
        if detail:
            message += f" ({detail})"
        super().__init__(message)


class CapacityError(TokenschedError):
    """A request that could never fit the KV pool, however empty it was."""


class QueueFull(TokenschedError):
    """The waiting queue is at ``max_waiting``; try again later."""


class ExecutorError(TokenschedError):
    """An executor could not run a step; the engine reports it through ``Scheduler.fail``."""

    def __init__(self, step_id: int, message: str) -> None:
        self.step_id = step_id
        super().__init__(f"step {step_id}: {message}")


class InvariantViolation(TokenschedError, AssertionError):
    """``check_invariants`` found the machines in a state they must never reach (a bug)."""
