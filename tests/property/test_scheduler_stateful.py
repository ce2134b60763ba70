"""The whole scheduler under random traffic, results, failures and aborts, with every policy."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from tokensched.policies import PrefixAwarePolicy, PriorityPolicy, SLOPolicy
from tokensched.policies.base import Policy
from tokensched.testing import SchedulerStateMachine

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
TestPriority.settings = settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
TestPrefixAware = PrefixAwareMachine.TestCase
TestPrefixAware.settings = settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
TestSLO = SLOMachine.TestCase
TestSLO.settings = settings(SETTINGS, max_examples=max(1, EXAMPLES // 4))
