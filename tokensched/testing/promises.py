"""Checks a policy's promises around one ``plan()``: snapshot before, look after, judge.

:func:`observe_plan` is what the state machine and the exhaustive search call
instead of ``scheduler.plan()``; it raises :class:`PromiseBroken` naming the
promise, the requests and their keys when a step breaks one. The promises
themselves are data in :mod:`tokensched.policies.promises`.

A policy keyed on the cached prefix only is promised its current order: the
observer takes fresh keys and cached prefixes before the plan and after it.
Any other dynamic policy's order is promised as of the queue's latest re-sort, so the
observer must see the keys the policy gave *at* that re-sort (the cache may
move later in the same plan, as admission allocates blocks). It does so by
standing a recording proxy in for the scheduler's policy for the length of
the plan: in a plan the scheduler asks for admission keys only to re-sort its
queue or to queue a preempted request, and a step that preempts admits
nobody (``Scheduler.plan``), so the keys recorded in an admitting plan are
the re-sort's.
"""

from __future__ import annotations

from collections.abc import Sequence

from tokensched.machines.request import Request
from tokensched.plan import StepPlan
from tokensched.policies.base import Policy, PolicyContext, SortKey
from tokensched.policies.promises import Promise, StepRecord, broken_promises, promises_of
from tokensched.scheduler import Scheduler


class PromiseBroken(AssertionError):
    """A step broke a promise its policy declares."""


class _KeyRecorder:
    """Stands in for a policy during one plan and remembers every admission key it gave."""

    __slots__ = ("dynamic", "keys", "name", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.name = policy.name
        self.dynamic = policy.dynamic
        self.keys: dict[str, SortKey] = {}

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        key = self.policy.admission_key(request, ctx)
        self.keys[request.request_id] = key
        return key

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return self.policy.victim_key(request, ctx)


def observe_plan(scheduler: Scheduler, promises: Sequence[Promise] | None = None) -> tuple[StepPlan | None, StepRecord]:
    """Call ``scheduler.plan()`` and check ``promises`` (default: the policy's own) on what it did."""
    s = scheduler
    policy = s.policy
    before_ctx = s.policy_context()
    waiting_before = tuple(s.waiting)
    keys = {r.request_id: policy.admission_key(r, before_ctx) for r in waiting_before}
    cached_before = {r.request_id: before_ctx.cached_prefix_tokens(r) for r in waiting_before}
    running_before = set(s.running)
    retained = s.retained_sessions
    recorder = _KeyRecorder(policy)
    s.policy = recorder
    try:
        plan = s.plan()
    finally:
        s.policy = policy
    running_after = tuple(s.running.values())
    waiting_after = tuple(s.waiting)
    waiting_ids = {r.request_id for r in waiting_after}
    preempted = tuple(s.live[rid] for rid in running_before if rid in waiting_ids)
    record = StepRecord(
        policy=policy,
        ctx=s.policy_context(),
        planned=plan is not None,
        waiting_before=waiting_before,
        admission_keys=keys,
        resort_keys=recorder.keys if recorder.keys and not preempted else None,
        waiting_after=waiting_after,
        retained_sessions=retained,
        admitted=tuple(r for r in running_after if r.request_id not in running_before),
        preempted=preempted,
        kept=running_after,
        still_waiting=tuple(r for r in waiting_before if r.request_id in waiting_ids),
        steps_in_flight=len(s.steps),
        live=len(s.live),
        cached_before=cached_before,
    )
    broken = broken_promises(promises if promises is not None else promises_of(policy), record)
    if broken:
        raise PromiseBroken(f"step {plan.step_id if plan else '(none)'} broke: " + "; ".join(broken))
    return plan, record
