"""Policy promises: checked in every interleaving of small scopes, and not vacuous."""

from __future__ import annotations

from collections.abc import Callable

import attrs
import pytest

from tokensched import RequestSpec, Scheduler, SchedulerConfig
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.profiles import PROFILES
from tokensched.machines.request import Request
from tokensched.policies import FCFSPolicy, PolicyContext, PrefixAwarePolicy, PriorityPolicy, SLOPolicy
from tokensched.policies.base import KeyDependence, Policy, SortKey
from tokensched.policies.promises import (
    ADMISSION_IN_CURRENT_ORDER,
    ADMISSION_IN_ORDER,
    ADMISSION_IN_SORTED_ORDER,
    VICTIMS_RANK_LAST,
    WORK_CONSERVING,
    StepRecord,
    broken_promises,
    default_promises,
    promises_of,
)
from tokensched.prefix_keys import PrefixKeys
from tokensched.queue import RESORT_EVERY, WaitingQueue
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
    assert promises_of(PrefixAwarePolicy()) == (VICTIMS_RANK_LAST, ADMISSION_IN_CURRENT_ORDER, WORK_CONSERVING)
    assert promises_of(PrefixAwarePolicy()) == default_promises(PrefixAwarePolicy())


class _ResortedPrefixAware(PrefixAwarePolicy):
    """The same order, declared as one that may move with anything: re-sorted now and then, not re-keyed."""

    name = "prefix-aware-resorted"
    key_depends_on = KeyDependence.ANY
    promises = (VICTIMS_RANK_LAST, ADMISSION_IN_SORTED_ORDER, WORK_CONSERVING)


def test_a_dynamic_policy_that_declares_nothing_is_re_sorted_and_promises_the_sorted_order() -> None:
    class Undeclared:
        name = "undeclared-dynamic"
        dynamic = True

        def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
            return (ctx.now - request.arrival_time, request.seq)

        def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
            return (request.seq,)

    policy: Policy = Undeclared()
    assert ADMISSION_IN_SORTED_ORDER in default_promises(policy)
    s = Scheduler(SchedulerConfig(num_blocks=16, block_size=2), policy=policy, clock=lambda: 0.0)
    assert s._prefix_keys is not None and not s._prefix_keys._rekey  # lengths kept, order re-sorted


def test_a_declaration_that_contradicts_dynamic_is_refused() -> None:
    class Contradiction(PrefixAwarePolicy):
        dynamic = False

    with pytest.raises(ValueError, match="contradicts dynamic"):
        Scheduler(SchedulerConfig(num_blocks=16, block_size=2), policy=Contradiction())


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
        "resort_keys": None,
        "waiting_after": (),
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


def test_the_sorted_order_promise_reports_a_step_that_breaks_it() -> None:
    s = Scheduler(SchedulerConfig(num_blocks=16, block_size=2), policy=PrefixAwarePolicy(), clock=lambda: 0.0)
    for rid in ("a", "b", "c"):
        s.submit(RequestSpec(request_id=rid, prompt_token_ids=[1, 2, 3]))
    a, b, c = s.waiting.at(0), s.waiting.at(1), s.waiting.at(2)
    promises = (ADMISSION_IN_SORTED_ORDER,)
    # No re-sort in the plan: the admitted must lead the queue as it stood.
    assert broken_promises(promises, _record(s, waiting_before=(a, b), admitted=(a,), still_waiting=(b,))) == []
    broken = broken_promises(promises, _record(s, waiting_before=(a, b), admitted=(b,), still_waiting=(a,)))
    assert len(broken) == 1 and "'b' was admitted from place 1" in broken[0]
    # A re-sort in the plan: judged by the keys the policy gave then, and the queue is left in that order.
    keys = {"a": (0.0, 2.0), "b": (-2.0, 1.0), "c": (1.0, 0.0)}
    ok = _record(
        s, waiting_before=(a, b, c), resort_keys=keys, admitted=(b,), still_waiting=(a, c), waiting_after=(a, c)
    )
    assert broken_promises(promises, ok) == []
    wrong = _record(s, waiting_before=(a, b, c), resort_keys=keys, admitted=(a,), still_waiting=(b, c))
    assert "'a' (key (0.0, 2.0) at the re-sort) was admitted before 'b'" in broken_promises(promises, wrong)[0]
    unsorted = _record(s, waiting_before=(a, b, c), resort_keys=keys, still_waiting=(a, b, c), waiting_after=(c, a, b))
    assert "the re-sorted queue has 'c'" in broken_promises(promises, unsorted)[0]


def test_a_queue_left_out_of_its_resorted_order_breaks_the_prefix_aware_promise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not vacuous: a re-sort that asks for keys but keeps the old order is caught by the exhaustive search."""

    def keep_order(queue: WaitingQueue, key: Callable[[Request], SortKey]) -> None:
        for request in queue:
            key(request)

    monkeypatch.setattr(WaitingQueue, "resort", keep_order)
    report = explore(RESORT_SCOPE, policy=_ResortedPrefixAware())
    assert any("admission in sorted order" in v for v in report.violations), report.summary()


def test_a_prefix_keyed_queue_not_re_keyed_breaks_the_current_order_promise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not vacuous: without the re-keying from the cache's events (the tracker hears nothing), the search fails."""

    def deaf(keys: PrefixKeys, block_hashes: list[int], *rest: object) -> None:
        return None

    monkeypatch.setattr(PrefixKeys, "blocks_stored", deaf)
    monkeypatch.setattr(PrefixKeys, "blocks_removed", deaf)
    report = explore(RESORT_SCOPE)
    assert any("admission in current order" in v for v in report.violations), report.summary()


def test_the_current_order_promise_reports_a_step_that_breaks_it() -> None:
    s = Scheduler(SchedulerConfig(num_blocks=16, block_size=2), policy=PrefixAwarePolicy(), clock=lambda: 0.0)
    for rid in ("a", "b", "c"):
        s.submit(RequestSpec(request_id=rid, prompt_token_ids=[1, 2, 3]))
    a, b, c = s.waiting.at(0), s.waiting.at(1), s.waiting.at(2)
    ctx = s.policy_context()
    keys = {r.request_id: s.policy.admission_key(r, ctx) for r in (a, b, c)}
    cached = dict.fromkeys(keys, 0)
    promises = (ADMISSION_IN_CURRENT_ORDER,)
    fine = _record(
        s, waiting_before=(a, b, c), admission_keys=keys, cached_before=cached, admitted=(a,), still_waiting=(b, c)
    )
    fine = attrs.evolve(fine, waiting_after=(b, c))
    assert broken_promises(promises, fine) == []
    jumped = attrs.evolve(fine, admitted=(b,), still_waiting=(a, c), waiting_after=(a, c))
    assert "'b' (key at best" in broken_promises(promises, jumped)[0]
    stale_before = attrs.evolve(fine, waiting_before=(b, a, c))
    assert "before the plan the queue had 'b'" in broken_promises(promises, stale_before)[0]
    stale_after = attrs.evolve(fine, waiting_after=(c, b))
    assert "after the plan the queue has 'c'" in broken_promises(promises, stale_after)[0]
    # A waiting request whose cached prefix shrank during the plan may fall behind the one admitted.
    shrunk = attrs.evolve(
        jumped, cached_before={"a": 2, "b": 2, "c": 0}, admission_keys={**keys, "a": (-2, 0.0, 0), "b": (-2, 0.0, 1)}
    )
    assert broken_promises(promises, shrunk) == []


def test_a_dynamic_queue_is_resorted_after_a_join_and_every_resort_every_steps() -> None:
    """The freshness that ADMISSION_IN_SORTED_ORDER leaves unchecked, pinned on the queue itself."""
    s = Scheduler(SchedulerConfig(num_blocks=16, block_size=2), policy=_ResortedPrefixAware(), clock=lambda: 0.0)
    for rid in ("a", "b"):
        s.submit(RequestSpec(request_id=rid, prompt_token_ids=[1, 2, 3]))
    queue = s.waiting
    assert queue.needs_resort()  # a request joined since the last sort
    queue.resort(lambda r: (r.seq,))
    asks = [queue.needs_resort() for _ in range(RESORT_EVERY)]
    assert asks == [False] * (RESORT_EVERY - 1) + [True]


RESORT_SCOPE = Bounds(
    prompts=((1, 2, 9), (5, 6, 7), (1, 2, 4)),
    max_tokens=1,
    num_blocks=4,
    max_steps_in_flight=1,
    alphabet=(7,),
    policy="prefix-aware",
)


def test_every_interleaving_keeps_the_prefix_aware_promises_where_the_cache_reorders_the_queue() -> None:
    report = explore(RESORT_SCOPE)
    assert not report.violations, "\n\n".join(report.violations[:3])


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_bench_profile_is_checked_like_its_policy(name: str) -> None:
    """The vLLM-, SGLang- and TensorRT-LLM-like profiles the bench compares: their configured policy and settings."""
    profile = PROFILES[name]
    policy = profile.make_policy(BenchConfig())
    declared = promises_of(policy)
    assert declared == promises_of(type(policy)()) and len(declared) == 3
    # One step in flight keeps the seven searches to seconds; the profile state machine covers overlap.
    report = explore(
        Bounds(max_tokens=1, max_steps_in_flight=1, alphabet=(7,)), policy=policy, settings=profile.settings
    )
    assert not report.violations, "\n\n".join(report.violations[:3])
