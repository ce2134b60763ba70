"""Policy promises: checked in every interleaving of small scopes, and not vacuous."""

from __future__ import annotations

import pytest

from tokensched import RequestSpec, Scheduler, SchedulerConfig
from tokensched.machines.request import Request
from tokensched.policies import FCFSPolicy, PolicyContext, PrefixAwarePolicy, PriorityPolicy, SLOPolicy
from tokensched.policies.base import Policy, SortKey
from tokensched.policies.promises import (
    ADMISSION_IN_ORDER,
    VICTIMS_RANK_LAST,
    WORK_CONSERVING,
    StepRecord,
    broken_promises,
    default_promises,
    promises_of,
)
from tokensched.testing.exhaustive import Bounds, explore

# The scopes below are the smallest found where the previous victim selection broke a promise:
# PRIORITY_SCOPE catches victims taken only among requests not yet in the step (issue 13, 1),
# FCFS_SCOPE a requester preempting itself while a later request runs (issue 13, 2).
PRIORITY_SCOPE = Bounds(
    prompts=((1, 2, 3), (4, 5), (6, 7)),
    max_tokens=3,
    num_blocks=5,
    priorities=(2, 0, 0),
    policy="priority",
    max_steps_in_flight=1,
    alphabet=(7,),
)
FCFS_SCOPE = Bounds(
    prompts=((1, 2, 3), (20, 21, 22)),
    max_tokens=4,
    num_blocks=5,
    policy="fcfs",
    alphabet=(7,),
    max_batched_tokens=8,
    long_prefill_chunk=None,
)


@pytest.mark.parametrize("bounds", [PRIORITY_SCOPE, FCFS_SCOPE], ids=["priority", "fcfs-overlap"])
def test_every_interleaving_keeps_the_policy_promises(bounds: Bounds) -> None:
    report = explore(bounds)
    print(report.summary())
    assert not report.violations, "\n\n".join(report.violations[:3])
    assert report.coverage["preemptions"] > 100, report.summary()


@pytest.mark.parametrize("policy", ["slo", "prefix-aware"])
def test_every_interleaving_keeps_the_other_policies_promises(policy: str) -> None:
    report = explore(Bounds(max_tokens=1, policy=policy))
    assert not report.violations, "\n\n".join(report.violations[:3])


def test_built_in_policies_declare_their_promises() -> None:
    for policy in (FCFSPolicy(), PriorityPolicy(), SLOPolicy()):
        assert promises_of(policy) == (VICTIMS_RANK_LAST, ADMISSION_IN_ORDER, WORK_CONSERVING)
    assert promises_of(PrefixAwarePolicy()) == (VICTIMS_RANK_LAST, WORK_CONSERVING)


class _Undeclared:
    name = "undeclared"
    dynamic = False

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.seq,)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (request.seq,)


def test_a_policy_that_declares_nothing_gets_the_default_promises() -> None:
    policy: Policy = _Undeclared()
    assert promises_of(policy) == default_promises(policy)
    assert ADMISSION_IN_ORDER in default_promises(policy)


def _record(s: Scheduler, **changes: object) -> StepRecord:
    running = tuple(s.running.values())
    base: dict[str, object] = {
        "policy": s.policy,
        "ctx": s.policy_context(),
        "planned": True,
        "waiting_before": (),
        "admission_keys": {},
        "retained_sessions": frozenset(),
        "admitted": (),
        "preempted": (),
        "kept": running,
        "still_waiting": (),
        "steps_in_flight": 1,
        "live": len(s.live),
    }
    base.update(changes)
    return StepRecord(**base)  # type: ignore[arg-type]


def test_each_promise_reports_a_step_that_breaks_it() -> None:
    s = Scheduler(SchedulerConfig(num_blocks=16, block_size=2), policy=PriorityPolicy(), clock=lambda: 0.0)
    for rid, priority in (("a", 0), ("b", 5)):
        s.submit(RequestSpec(request_id=rid, prompt_token_ids=[1, 2, 3], priority=priority))
    s.plan()
    a, b = s.running["a"], s.running["b"]
    keys = {"a": s.policy.admission_key(a, s.policy_context()), "b": s.policy.admission_key(b, s.policy_context())}
    promises = promises_of(s.policy)
    assert broken_promises(promises, _record(s)) == []
    broken = broken_promises(promises, _record(s, preempted=(a,), kept=(b,)))
    assert len(broken) == 1 and broken[0].startswith("victims rank last: 'a'")
    broken = broken_promises(promises, _record(s, admitted=(b,), still_waiting=(a,), admission_keys=keys))
    assert len(broken) == 1 and broken[0].startswith("admission in order: 'b'")
    broken = broken_promises(promises, _record(s, planned=False, steps_in_flight=0))
    assert len(broken) == 1 and broken[0].startswith("work conserving")
