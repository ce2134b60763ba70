"""Tools for testing schedulers and policies: a fake executor, strategies, a base state machine.

Subclass :class:`SchedulerStateMachine` and override ``make_policy`` to
property-test a policy of your own (see ``examples/custom_policy.py``).
"""

from tokensched.testing.fake_executor import FakeExecutor
from tokensched.testing.machine import SchedulerStateMachine
from tokensched.testing.promises import PromiseBroken, observe_plan
from tokensched.testing.strategies import prompts, request_specs, scheduler_configs

__all__ = [
    "FakeExecutor",
    "PromiseBroken",
    "SchedulerStateMachine",
    "observe_plan",
    "prompts",
    "request_specs",
    "scheduler_configs",
]
