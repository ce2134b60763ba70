"""What a policy promises, as predicates over one step that a test can check.

A policy's sort keys say how it *means* to order requests; a promise says what
the scheduler, run with that policy, guarantees a caller about a step. Each
:class:`Promise` is a named predicate over a :class:`StepRecord` (what one
``plan()`` did, seen from outside: who ran, who was admitted, who was
preempted). ``tokensched.testing`` checks a policy's promises after every
plan of its state machine and of the exhaustive search, so a policy written
by a user is checked with no extra code.

A policy declares them as a ``promises`` attribute; one that declares none
gets :func:`default_promises`: the victim order and work conservation for
every policy, and admission order as well for a static policy (one whose keys
are fixed while a request waits).

Built-in promises:

- :data:`VICTIMS_RANK_LAST`: a request preempted in a step never ranks above
  (by the policy's victim key) a request that keeps running. Preemption picks
  from the whole running set, worst first, and the requester never preempts
  itself. (vLLM: ``_preempt_request`` takes ``max(running, key=priority)``.)
- :data:`ADMISSION_IN_ORDER`: the requests admitted in a step come first in
  the policy's admission order among those that were waiting, except for the
  one documented look-ahead: past a head held back by another session's
  retained cache, a retained session's next turn may go first
  (``session_kv_retention_s``, at most ``MAX_PASSED_OVER`` places).
- :data:`ADMISSION_IN_CURRENT_ORDER`: the promise of a policy whose keys move
  with the cached prefix only (``key_depends_on = KeyDependence.CACHED_PREFIX``,
  like ``PrefixAwarePolicy``). The scheduler re-keys exactly the requests
  whose cached prefix changed (:mod:`tokensched.prefix_keys`), before each
  admission, so it promises the policy's *current* order: the queue is in
  fresh-key order before and after every plan, and nobody is admitted while
  a request ahead of it *at that moment* keeps waiting (same look-ahead).
  Within a plan the cache only loses blocks (admission evicts; nothing is
  committed until ``complete()``), so a cached prefix moves only between its
  length before the plan and its length after it; the check calls a step
  wrong only when the admitted request ranks behind the waiting one for
  every pair of lengths in those ranges, which is when it certainly did.
- :data:`ADMISSION_IN_SORTED_ORDER`: the promise of any other dynamic policy
  (its keys may move with the clock, say). Its queue is re-sorted at steps that
  admit, when a request joined it since the last sort and every
  ``RESORT_EVERY`` such steps otherwise (see :mod:`tokensched.queue`), so
  what it can promise is: the requests admitted in a step come first in the
  policy's order *as of the queue's latest re-sort* (the keys the policy gave
  then), with the same look-ahead; a re-sort leaves the queue in that order.
  Comparing with fresh keys instead would flag every step where the keys
  moved since the last sort, which the policy never promised.
- :data:`WORK_CONSERVING`: the scheduler never idles while requests wait: if
  nothing is in flight and a request is live, ``plan()`` schedules something.
  With every request finishing in the end (checked when a run drains), no
  request waits unboundedly while the pool could serve it.

Not checked step by step: how stale a re-sorted order may grow (the re-sort
period above); a re-sort skipped after a request joined shows up only when
it lets a request admitted later break the order of the next re-sort.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import attrs

from tokensched.machines.request import Request
from tokensched.policies.base import KeyDependence, Policy, PolicyContext, SortKey, key_dependence


@attrs.frozen(slots=True)
class StepRecord:
    """One ``plan()`` seen from outside; built by ``tokensched.testing.observe_plan``.

    Requests are the scheduler's own objects, read after the plan.
    """

    policy: Policy
    ctx: PolicyContext  # the policy's view at the end of the plan
    planned: bool  # plan() returned a step
    waiting_before: tuple[Request, ...]  # in queue order
    admission_keys: dict[str, SortKey]  # of every request waiting before the plan, taken before it
    resort_keys: dict[str, SortKey] | None  # keys the policy gave at a re-sort in this plan; None: no re-sort
    waiting_after: tuple[Request, ...]  # the queue after the plan, in its order
    retained_sessions: frozenset[str]  # sessions whose next turn may be admitted by look-ahead
    admitted: tuple[Request, ...]  # entered the running set in this plan
    preempted: tuple[Request, ...]  # left the running set for the waiting queue in this plan
    kept: tuple[Request, ...]  # in the running set after the plan
    still_waiting: tuple[Request, ...]  # waiting before and after
    steps_in_flight: int  # after the plan
    live: int  # live requests after the plan
    cached_before: dict[str, int] = attrs.field(factory=dict)  # cached prefix tokens of each waiting before the plan


@attrs.frozen(slots=True)
class Promise:
    """A named guarantee; ``check`` returns None when it holds, else what broke it."""

    name: str
    description: str
    check: Callable[[StepRecord], str | None]


def _victims_rank_last(record: StepRecord) -> str | None:
    key = record.policy.victim_key
    ctx = record.ctx
    for victim in record.preempted:
        victim_key = key(victim, ctx)
        for kept in record.kept:
            if key(kept, ctx) > victim_key:
                return (
                    f"{victim.request_id!r} (victim key {victim_key}) was preempted while "
                    f"{kept.request_id!r} (victim key {key(kept, ctx)}), ranked below it, keeps running"
                )
    return None


def _admission_in_order(record: StepRecord) -> str | None:
    keys = record.admission_keys
    for admitted in record.admitted:
        if admitted.request_id not in keys or _look_ahead(record, admitted):
            continue  # preempted in this very plan, or the documented look-ahead
        admitted_key = keys[admitted.request_id]
        for waiting in record.still_waiting:
            if keys[waiting.request_id] < admitted_key:
                return (
                    f"{admitted.request_id!r} (admission key {admitted_key}) was admitted before "
                    f"{waiting.request_id!r} (admission key {keys[waiting.request_id]}), which still waits"
                )
    return None


def _look_ahead(record: StepRecord, request: Request) -> bool:
    return request.session_id in record.retained_sessions


_Rank = TypeVar("_Rank", int, SortKey)


def _passed_over(record: StepRecord, rank: Mapping[str, _Rank]) -> tuple[Request, Request] | None:
    """An admitted request and a still-waiting one ranked before it (by ``rank``, lower first), if any."""
    for admitted in record.admitted:
        if admitted.request_id not in rank or _look_ahead(record, admitted):
            continue
        for waiting in record.still_waiting:
            if rank[waiting.request_id] < rank[admitted.request_id]:
                return admitted, waiting
    return None


def _admission_in_sorted_order(record: StepRecord) -> str | None:
    keys = record.resort_keys
    if keys is None:  # the queue kept its order: those admitted must lead it
        position = {r.request_id: i for i, r in enumerate(record.waiting_before)}
        passed = _passed_over(record, position)
        if passed is None:
            return None
        admitted, waiting = passed
        return (
            f"{admitted.request_id!r} was admitted from place {position[admitted.request_id]} of a "
            f"queue not re-sorted since, while {waiting.request_id!r} ahead of it still waits"
        )
    passed = _passed_over(record, keys)
    if passed is not None:
        admitted, waiting = passed
        return (
            f"{admitted.request_id!r} (key {keys[admitted.request_id]} at the re-sort) was admitted before "
            f"{waiting.request_id!r} (key {keys[waiting.request_id]}), which still waits"
        )
    sorted_part = [r for r in record.waiting_after if r.request_id in keys]
    for before, after in itertools.pairwise(sorted_part):
        if keys[after.request_id] < keys[before.request_id]:
            return (
                f"the re-sorted queue has {before.request_id!r} (key {keys[before.request_id]}) ahead of "
                f"{after.request_id!r} (key {keys[after.request_id]})"
            )
    return None


def _admission_in_current_order(record: StepRecord) -> str | None:
    keys = record.admission_keys
    for before, after in itertools.pairwise(record.waiting_before):
        if keys[after.request_id] < keys[before.request_id]:
            return (
                f"before the plan the queue had {before.request_id!r} (key {keys[before.request_id]}) ahead of "
                f"{after.request_id!r} (key {keys[after.request_id]})"
            )
    ctx = record.ctx
    key = record.policy.admission_key
    fresh = [key(r, ctx) for r in record.waiting_after]
    for i in range(1, len(fresh)):
        if fresh[i] < fresh[i - 1]:
            return (
                f"after the plan the queue has {record.waiting_after[i - 1].request_id!r} (key {fresh[i - 1]}) "
                f"ahead of {record.waiting_after[i].request_id!r} (key {fresh[i]})"
            )
    for admitted in record.admitted:
        if admitted.request_id not in keys or _look_ahead(record, admitted):
            continue
        best = min(_keys_between(record, admitted, 0))  # its cached prefix at admission: at most what it had
        for waiting in record.still_waiting:
            worst = max(_keys_between(record, waiting, ctx.cached_prefix_tokens(waiting)))
            if worst < best:
                return (
                    f"{admitted.request_id!r} (key at best {best}) was admitted before {waiting.request_id!r} "
                    f"(key at worst {worst} all through the plan), which still waits"
                )
    return None


def _keys_between(record: StepRecord, request: Request, low: int) -> list[SortKey]:
    """``request``'s keys for every cached prefix from ``low`` tokens up to what it had before the plan."""
    high = record.cached_before.get(request.request_id)
    if high is None:
        return [record.admission_keys[request.request_id]]
    ctx = record.ctx
    bs = ctx.block_size
    key = record.policy.admission_key
    return [
        key(request, PolicyContext(now=ctx.now, block_size=bs, cached_prefix_tokens=_always(c)))
        for c in range(min(low, high), high + 1, bs)
    ]


def _always(tokens: int) -> Callable[[Request], int]:
    return lambda _request: tokens


def _work_conserving(record: StepRecord) -> str | None:
    if not record.planned and record.steps_in_flight == 0 and record.live:
        return f"plan() scheduled nothing with no step in flight and {record.live} live requests"
    return None


VICTIMS_RANK_LAST = Promise(
    "victims rank last",
    "a request preempted in a step never ranks above one that keeps running",
    _victims_rank_last,
)
ADMISSION_IN_ORDER = Promise(
    "admission in order",
    "requests are admitted in the policy's order, except the documented retention look-ahead",
    _admission_in_order,
)
ADMISSION_IN_CURRENT_ORDER = Promise(
    "admission in current order",
    "requests are admitted in the policy's order with the keys of the moment (kept exact from the cache's events), "
    "except the retention look-ahead",
    _admission_in_current_order,
)
ADMISSION_IN_SORTED_ORDER = Promise(
    "admission in sorted order",
    "requests are admitted in the policy's order as of the queue's latest re-sort, except the retention look-ahead",
    _admission_in_sorted_order,
)
WORK_CONSERVING = Promise(
    "work conserving",
    "with nothing in flight and a request live, plan() schedules a step",
    _work_conserving,
)


def default_promises(policy: Policy) -> tuple[Promise, ...]:
    """What the scheduler guarantees for any policy, by what its keys depend on (see ``KeyDependence``)."""
    dependence = key_dependence(policy)
    if dependence is KeyDependence.CACHED_PREFIX:
        return (VICTIMS_RANK_LAST, ADMISSION_IN_CURRENT_ORDER, WORK_CONSERVING)
    if dependence is KeyDependence.ANY:
        return (VICTIMS_RANK_LAST, ADMISSION_IN_SORTED_ORDER, WORK_CONSERVING)
    return (VICTIMS_RANK_LAST, ADMISSION_IN_ORDER, WORK_CONSERVING)


def promises_of(policy: Policy) -> tuple[Promise, ...]:
    """The promises ``policy`` declares (its ``promises`` attribute), else :func:`default_promises`."""
    declared: Sequence[Promise] | None = getattr(policy, "promises", None)
    return tuple(declared) if declared is not None else default_promises(policy)


def broken_promises(promises: Sequence[Promise], record: StepRecord) -> list[str]:
    """``"name: what broke it"`` for every promise the step broke."""
    broken: list[str] = []
    for promise in promises:
        problem = promise.check(record)
        if problem is not None:
            broken.append(f"{promise.name}: {problem}")
    return broken
