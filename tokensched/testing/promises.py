"""Checks a policy's promises around one ``plan()``: snapshot before, look after, judge.

:func:`observe_plan` is what the state machine and the exhaustive search call
instead of ``scheduler.plan()``; it raises :class:`PromiseBroken` naming the
promise, the requests and their keys when a step breaks one. The promises
themselves are data in :mod:`tokensched.policies.promises`.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokensched.plan import StepPlan
from tokensched.policies.promises import Promise, StepRecord, broken_promises, promises_of
from tokensched.scheduler import Scheduler


class PromiseBroken(AssertionError):
    """A step broke a promise its policy declares."""


def observe_plan(scheduler: Scheduler, promises: Sequence[Promise] | None = None) -> tuple[StepPlan | None, StepRecord]:
    """Call ``scheduler.plan()`` and check ``promises`` (default: the policy's own) on what it did."""
    s = scheduler
    policy = s.policy
    before_ctx = s.policy_context()
    waiting_before = tuple(s.waiting)
    keys = {r.request_id: policy.admission_key(r, before_ctx) for r in waiting_before}
    running_before = set(s.running)
    retained = s.retained_sessions
    plan = s.plan()
    running_after = tuple(s.running.values())
    waiting_ids = {r.request_id for r in s.waiting}
    record = StepRecord(
        policy=policy,
        ctx=s.policy_context(),
        planned=plan is not None,
        waiting_before=waiting_before,
        admission_keys=keys,
        retained_sessions=retained,
        admitted=tuple(r for r in running_after if r.request_id not in running_before),
        preempted=tuple(s.live[rid] for rid in running_before if rid in waiting_ids),
        kept=running_after,
        still_waiting=tuple(r for r in waiting_before if r.request_id in waiting_ids),
        steps_in_flight=len(s.steps),
        live=len(s.live),
    )
    broken = broken_promises(promises if promises is not None else promises_of(policy), record)
    if broken:
        raise PromiseBroken(f"step {plan.step_id if plan else '(none)'} broke: " + "; ".join(broken))
    return plan, record
