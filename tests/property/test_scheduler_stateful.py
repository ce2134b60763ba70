"""The whole scheduler under random traffic, results, failures and aborts, with every policy.

Each machine checks every invariant and its policy's declared promises after
every step (tokensched.policies.promises), 500 examples each by default.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tokensched.policies import PrefixAwarePolicy, PriorityPolicy, SLOPolicy
from tokensched.policies.base import Policy
from tokensched.testing import SchedulerStateMachine
from tokensched.testing.strategies import BOUNDARY_EVENTS

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class FCFSMachine(SchedulerStateMachine):
    pass


class PriorityMachine(SchedulerStateMachine):
    def make_policy(self) -> Policy:
        return PriorityPolicy()


class PrefixAwareMachine(SchedulerStateMachine):
    def make_policy(self) -> Policy:
        return PrefixAwarePolicy()


class SLOMachine(SchedulerStateMachine):
    def make_policy(self) -> Policy:
        return SLOPolicy(default_ttft_deadline=0.05)


TestFCFS = FCFSMachine.TestCase
TestFCFS.settings = SETTINGS
TestPriority = PriorityMachine.TestCase
TestPriority.settings = SETTINGS
TestPrefixAware = PrefixAwareMachine.TestCase
TestPrefixAware.settings = SETTINGS
TestSLO = SLOMachine.TestCase
TestSLO.settings = SETTINGS


EDGES = (
    "token budget filled exactly",
    "token budget filled exactly while drafts are verified",
    "drafts grow a row into a new block",
    "a request enters with its tokens ending on a block edge",
    "request fills the pool exactly",
    "request one block over the pool",
    "no free block after a plan",
    "every running request in a step in flight",
    "a preemption (victim order checked)",
    "an admission passing requests that keep waiting (admission order checked)",
)


def test_the_machines_above_reached_every_boundary() -> None:
    """Runs after the machines in this module (pytest keeps file order); the counts are printed at the end."""
    if not BOUNDARY_EVENTS:
        pytest.skip("no state machine ran in this session")
    missing = [edge for edge in EDGES if BOUNDARY_EVENTS[edge] == 0]
    assert not missing, f"never reached: {missing}; counts: {dict(BOUNDARY_EVENTS)}"
