"""The whole scheduler under random traffic, results, failures and aborts, with every policy.

Each machine checks every invariant and its policy's declared promises after
every step (tokensched.policies.promises), 500 examples each by default (CI
runs the default). The bench's engine profiles (vLLM-, SGLang-, TensorRT-LLM-
like and tokensched's own) are checked the same way by one more machine that
draws a profile and runs its configured policy under its scheduler settings.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.profiles import PROFILES
from tokensched.config import SchedulerConfig
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


class ProfileMachine(SchedulerStateMachine):
    """A bench profile's policy (as the bench builds it) under its settings over a drawn small config."""

    def draw_setup(self, data: st.DataObject) -> tuple[SchedulerConfig, Policy]:
        profile = PROFILES[data.draw(st.sampled_from(sorted(PROFILES)), label="profile")]
        config = data.draw(self.configs(), label="config")
        config = SchedulerConfig.model_validate({**config.model_dump(), **profile.settings})
        return config, profile.make_policy(BenchConfig())


TestFCFS = FCFSMachine.TestCase
TestFCFS.settings = SETTINGS
TestPriority = PriorityMachine.TestCase
TestPriority.settings = SETTINGS
TestPrefixAware = PrefixAwareMachine.TestCase
TestPrefixAware.settings = SETTINGS
TestSLO = SLOMachine.TestCase
TestSLO.settings = SETTINGS
# The profiles run the policies above (tests/property/test_promises.py checks each in the exhaustive search
# too) with budgets too large to bind in these pools, so a fifth of the examples suffices.
TestProfiles = ProfileMachine.TestCase
TestProfiles.settings = settings(SETTINGS, max_examples=max(1, EXAMPLES // 5))
MACHINES = (TestFCFS, TestPriority, TestPrefixAware, TestSLO)


def test_ci_runs_at_least_500_examples_of_each_built_in_policy_machine() -> None:
    """The issue's bar; CI sets no TOKENSCHED_STATEFUL_EXAMPLES, so a lower count can only be a local choice."""
    if "TOKENSCHED_STATEFUL_EXAMPLES" in os.environ:
        pytest.skip("example count overridden for this run")
    assert all(machine.settings.max_examples >= 500 for machine in MACHINES)


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
    "an admission passing requests in an order the cache moved (current order checked)",
)


def test_the_machines_above_reached_every_boundary() -> None:
    """Runs after the machines in this module (pytest keeps file order); the counts are printed at the end."""
    if not BOUNDARY_EVENTS:
        pytest.skip("no state machine ran in this session")
    missing = [edge for edge in EDGES if BOUNDARY_EVENTS[edge] == 0]
    assert not missing, f"never reached: {missing}; counts: {dict(BOUNDARY_EVENTS)}"
