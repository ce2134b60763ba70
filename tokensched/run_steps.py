"""The scheduler's side of multi-step decoding: offering a run of decode steps and applying its result.

The contract is in :mod:`tokensched.decode_run`; :meth:`Scheduler.plan_run
<tokensched.scheduler.Scheduler.plan_run>` and :meth:`Scheduler.complete_run
<tokensched.scheduler.Scheduler.complete_run>` call these. They live apart
from the per-step path because they are one concept (when single steps would
do nothing but the same decodes, and how to apply many of them at once) that
a single step never needs; they read and move the scheduler's own state, as
its methods would, so they stay in this package beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

import attrs

from tokensched.decode_columns import exact_decode
from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.errors import InvalidRequest
from tokensched.machines.blocks import BlockPool
from tokensched.machines.request import Decoding, Prefilling, Request
from tokensched.machines.step import Step
from tokensched.plan import RequestOutput, StepResult
from tokensched.policies.base import KeyDependence
from tokensched.policies.fcfs import FCFSPolicy
from tokensched.policies.prefix_aware import PrefixAwarePolicy
from tokensched.policies.priority import PriorityPolicy
from tokensched.policies.slo import SLOPolicy
from tokensched.retention import MAX_PASSED_OVER
from tokensched.run_outputs import PlainStepOutputs
from tokensched.run_replay import replay

if TYPE_CHECKING:
    from tokensched.scheduler import Scheduler


def plan_run(sched: Scheduler, max_steps: int, *, cross_blocks: bool = False, chunks: bool = False) -> DecodeRun | None:
    """:meth:`Scheduler.plan_run <tokensched.scheduler.Scheduler.plan_run>`: when a run is offered is said there."""
    if max_steps < 1:
        raise InvalidRequest(f"plan_run: max_steps must be >= 1, got {max_steps}")
    running = sched._running
    n = len(running)
    k = sched._k_spec
    cfg = sched.config
    if (
        sched._run is not None
        or not n
        or sched.host is not None
        or sched._events
        or n * (1 + k) > cfg.max_batched_tokens
    ):
        return None
    prefill: Request | None = None
    for r in running.values():  # the common refusal, found before the admission walk and the columns
        if type(r.state) is not Decoding:
            if not (chunks and cross_blocks) or prefill is not None or type(r.state) is not Prefilling:
                return None  # a prompt still prefilling (its state type is right even while decode columns are out)
            prefill = r
    if prefill is not None:
        return plan_chunk_run(sched, max_steps, prefill)
    reserve = _reserve(sched, n, k)
    if reserve is None:
        return None
    shut_until = slack = math.inf
    if sched.waiting:
        if sched.pool.num_pending:
            return None  # a step in flight frees blocks when it completes: a head may fit then
        shut = _admission_stays_shut(sched)
        if shut is None:
            return None
        shut_until, slack = shut
    flying: list[Request] = []
    planned: list[int] = []
    if sched.steps:
        if len(sched.steps) != 1 or not k or cfg.max_steps_in_flight != 2:
            return None
        step = next(iter(sched.steps))
        flying = step.requests
        if len(flying) >= n or not all(step.samples):
            return None
        for i, r in enumerate(flying):
            if step.epochs[i] != r.epoch or step.num_tokens[i] != 1 + step.num_drafts[i]:
                return None
        planned = step.num_tokens
    elif not k and cfg.max_steps_in_flight != 1:
        return None
    sched._materialize()
    if flying:
        ids = {r.request_id for r in flying}
        again = [r for r in running.values() if r.request_id in ids]
        if any(a is not b for a, b in zip(again, flying, strict=True)):
            return None  # planned by victim key (blocks were short then): its next step takes admission order
        rows = flying + [r for r in running.values() if r.request_id not in ids]
    else:
        rows = list(running.values())
    columns = _run_columns(sched, rows, planned)
    if columns is None:
        return None
    pool = sched.pool
    cross = (
        cross_blocks
        and not pool.num_pending
        and (not sched.waiting or (sched._key_dependence is KeyDependence.STATIC and sched._retention is None))
    )
    run = _decode_run(
        sched,
        max_steps,
        rows,
        columns,
        groups=[list(range(len(flying))), list(range(len(flying), n))] if flying else None,
        cross_blocks=cross,
        spare_blocks=pool.num_free - reserve,
        admission_shut_until=shut_until,
        admission_slack=slack,
    )
    cursor = RunCursor(run)
    for j in range(run.depth):
        step_drafts = cursor.plan(j)
        if (
            step_drafts is None
            or any(s < run.launched for s in cursor.allocs)
            or (j < run.launched and [1 + len(d) for d in step_drafts] != planned)
        ):
            return None  # the next step needs a block (or the step in flight is not the run's)
    return _hand_out(sched, run, rows, cursor)


def plan_chunk_run(sched: Scheduler, max_steps: int, prefill: Request) -> DecodeRun | None:
    """A run whose steps are the decodes and a chunk of ``prefill``'s prompt, or None (see :class:`DecodeRun`).

    Why: on a DP-attention rank most single steps are a few decodes beside a
    prefill chunk that a run of decodes alone could not take, and a prompt
    takes tens of such steps. Offered only where single steps would plan
    exactly the run's steps: one step at a time (``max_steps_in_flight == 1``,
    nothing in flight, no block pending), ``prefill`` the only request still
    prefilling and the last of the running set (admission order serves it
    last), and free blocks for one step's worst case plus a block a row
    (single steps serve admission order then, and no row can run short of
    blocks). The cursor takes a step only while its chunk fills the budget
    the decodes leave and does not reach the prompt's end: a step whose
    budget is spent never calls admission (so nothing a waiting request or
    the clock could change matters), and the last chunk, which samples, is a
    single step's. The blocks each step takes are allocated when the run is
    applied, in the single steps' order (step 0's now, as :meth:`plan` would).
    """
    running = sched._running
    cfg = sched.config
    pool = sched.pool
    bs = sched._bs
    state = prefill.state
    assert type(state) is Prefilling
    if (
        cfg.max_steps_in_flight != 1
        or sched.steps
        or pool.num_pending
        or prefill.inflight_steps
        or state.num_scheduled != state.num_computed
        or next(reversed(running.values())) is not prefill
    ):
        return None
    reserve = -(-cfg.max_batched_tokens // bs) + len(running)
    if pool.num_free < reserve:
        return None  # single steps might serve by victim key, or a row might run short of blocks
    sched._materialize()
    rows = list(running.values())
    columns = _run_columns(sched, rows[:-1], [])
    if columns is None:
        return None
    pos, last, drafts, tables, ends, rooms, limits, stops = columns
    pos.append(state.num_computed)
    last.append(0)  # the chunk row's columns below are read by no decode loop (it is in no group)
    drafts.append([])
    tables.append(state.blocks)
    ends.append(len(state.blocks) * bs)
    rooms.append(0)
    limits.append(0)
    stops.append(frozenset())
    # Less step 0's blocks below (the run's tables will hold them); nothing in flight: one group.
    run = _decode_run(
        sched, max_steps, rows, columns, spare_blocks=pool.num_free - reserve, chunk_tokens=prefill.tokens.size
    )
    cursor = RunCursor(run)
    if cursor.plan(0) is None:
        return None  # its chunk would end the prompt or leave budget: a single step
    return _hand_out(sched, run, rows, cursor)


def _hand_out(sched: Scheduler, run: DecodeRun, rows: list[Request], cursor: RunCursor) -> DecodeRun:
    """Mark ``run`` out and return it: the steps ``cursor`` planned now take their blocks now, as plan() would.

    The run's ``block_end`` column moves to the rows' grown tables; the
    plan's removed ids and truncations go to the run, and the scheduler
    plans nothing else until the run is applied.
    """
    ends = run.block_end
    if cursor.allocs:
        for s in sorted(cursor.allocs):
            for i, count in cursor.allocs[s]:
                state = _grow(sched.pool, rows[i], count)  # grows tables[i], the row's own list
                ends[i] = len(state.blocks) * sched._bs
        run = attrs.evolve(run, block_end=ends, spare_blocks=run.spare_blocks - cursor.allocated)
    sched._removed.clear()
    sched._truncated = {}
    sched._run = (run, rows)
    return run


_FIXED_VICTIM_KEYS: frozenset[type] = frozenset({FCFSPolicy, PriorityPolicy, PrefixAwarePolicy, SLOPolicy})
"""Policies whose victim key reads only fields fixed while a request decodes (arrival, seq, priority, and
whether it has its first token): the order they serve a run's rows in cannot move during the run. A
subclass may override ``victim_key``, so only these exact types count."""


def _reserve(sched: Scheduler, n: int, k: int) -> int | None:
    """The free blocks every step of a run must find at its plan, or None when no run may start now.

    Single steps serve the running set in admission order while the free
    blocks number at least one step's worst case plus a block a row;
    below that they serve it by victim key, and a row that finds fewer free
    blocks than it needs preempts or waits. A run plans its rows in
    admission order, so by default it keeps that reserve. When the victim
    keys put the running set in admission order too (and cannot move while
    it decodes), both orders are the same and only the preemption matters:
    the run then keeps the blocks its rows could take in one step
    (``ceil((1 + k) / block_size)`` a row: a step computes at most ``1 + k``
    positions past those its blocks cover), so no row ever finds too few.
    Why: near a full pool (two long contexts in a small pool) single steps
    sit below the first reserve for thousands of steps an hour.
    """
    bs = sched._bs
    free = sched.pool.num_free
    reserve = -(-sched.config.max_batched_tokens // bs) + n
    if free >= reserve:
        return reserve
    reserve = n * -(-(1 + k) // bs)
    if free < reserve or type(sched.policy) not in _FIXED_VICTIM_KEYS:
        return None
    ctx = sched.policy_context()
    victim_key = sched.policy.victim_key
    keys = [victim_key(r, ctx) for r in sched._running.values()]
    if any(a > b for a, b in pairwise(keys)):
        return None  # sorted by victim key, the rows would run in another order (and draw in it)
    return reserve


_Columns = tuple[
    list[int], list[int], list[list[int]], list[list[int]], list[int], list[int], list[int], list[frozenset[int]]
]
"""A run's per-row columns: positions, last tokens, drafts, block tables, block ends, room, length limits,
stop ids (the :class:`DecodeRun` fields of the same names, in that order)."""


def _decode_run(
    sched: Scheduler,
    max_steps: int,
    rows: list[Request],
    columns: _Columns,
    *,
    spare_blocks: int,
    cross_blocks: bool = True,
    groups: list[list[int]] | None = None,
    admission_shut_until: float = math.inf,
    admission_slack: float = math.inf,
    chunk_tokens: int = 0,
) -> DecodeRun:
    """The :class:`DecodeRun` over ``rows`` with ``columns``, starting at the step in flight (if any) or the next.

    What every run takes from the scheduler as it stands (its step ids, block
    size, speculation, the removed ids and truncated tables the next plan
    would carry) is filled in here; a chunk run's chunk row is the last row,
    prefilling up to ``chunk_tokens`` under the step budget and chunk size.
    """
    pos, last, drafts, tables, ends, rooms, limits, stops = columns
    return DecodeRun(
        first_step_id=sched.steps.next_step_id - len(sched.steps),
        max_steps=max_steps,
        block_size=sched._bs,
        num_speculative_tokens=sched._k_spec,
        request_ids=[r.request_id for r in rows],
        removed_request_ids=tuple(sched._removed),
        truncated_block_tables=sched._truncated,
        num_computed_tokens=pos,
        last_token_ids=last,
        draft_token_ids=drafts,
        block_tables=tables,
        block_end=ends,
        room=rooms,
        length_limit=limits,
        stop_token_ids=stops,
        groups=groups or [],
        launched=len(sched.steps),
        cross_blocks=cross_blocks,
        spare_blocks=spare_blocks,
        admission_shut_until=admission_shut_until,
        admission_slack=admission_slack,
        chunk_tokens=chunk_tokens,
        chunk_budget=sched.config.max_batched_tokens if chunk_tokens else 0,
        chunk_cap=sched._chunk if chunk_tokens else 0,
    )


def _run_columns(sched: Scheduler, rows: list[Request], planned: list[int]) -> _Columns | None:
    """The per-row columns of a run over ``rows`` (the first ``len(planned)`` in flight), or None."""
    bs = sched._bs
    caching = sched._caching
    max_len = sched.config.max_model_len
    pos_l: list[int] = []
    last: list[int] = []
    drafts: list[list[int]] = []
    tables: list[list[int]] = []
    ends: list[int] = []
    rooms: list[int] = []
    limits: list[int] = []
    stops: list[frozenset[int]] = []
    for i, r in enumerate(rows):
        ahead = planned[i] if i < len(planned) else 0  # tokens of the step in flight
        if r.sampling.logprobs or r.inflight_steps != (1 if ahead else 0) or r.inflight_samples != ahead:
            return None
        if not exact_decode(r, bs, caching, ahead, hashed_ahead=True):
            return None
        s = r.state
        assert type(s) is Decoding
        pos = s.num_computed
        blocks = s.blocks
        room = r.max_tokens - (pos + 1 - r.num_prompt_tokens)
        if room < 1:
            return None
        pos_l.append(pos)
        last.append(r.last_token)
        drafts.append(list(r.draft_tokens))
        tables.append(blocks)
        ends.append(len(blocks) * bs)
        rooms.append(room)
        limits.append(min(r.num_prompt_tokens + r.max_tokens, max_len))
        eos = r.eos_token_id
        stops.append(r.stop_token_ids if eos is None else r.stop_token_ids | {eos})
    return pos_l, last, drafts, tables, ends, rooms, limits, stops


def _admission_stays_shut(sched: Scheduler) -> tuple[float, float] | None:
    """Until when every step of a run would admit nothing and change nothing in :meth:`_admit_waiting`, and by
    how many blocks the free blocks may rise above their number now before it might (``admission_slack``).

    Walks the waiting queue as :meth:`_admit_waiting` would now, without
    admitting: admission stays shut while every request it looks at is one
    that did not fit with the free blocks there are now (less the blocks
    retention protects from it), since a run that crosses no block frees,
    commits and evicts none. A run that crosses blocks may free some: a
    rollback gives back a block that the step in flight at the run's start
    took for drafts, and the row may not take it again (it proposed fewer
    drafts); the slack is the fewest blocks more than now that some request
    looked at did not fit with. Returns the moment that may change (a
    retained session's protection lapsing, or a request it looks at
    having waited the retention window: inf when none applies), or None
    when admission may open now. A policy keyed on the cached prefix only
    counts as static here (its keys move only with the cache); one keyed
    on anything else never keeps admission shut. The cache's events up to
    now are applied to the queue's keys first, and the retention's expired
    sessions are dropped at the clock now, as the next plan would.
    """
    if len(sched._running) >= sched.config.max_running:
        return math.inf, math.inf
    if sched._key_dependence is KeyDependence.ANY:
        return None
    if sched._prefix_keys is not None:
        sched._prefix_keys.flush()  # the cache moved since the last admission: re-key whom it touched, as it would
    waiting = sched.waiting
    retention = sched._retention
    protects = retention is not None and len(retention) > 0
    now = sched.clock() if protects else 0.0
    free = sched.pool.num_free
    shut_until = slack = math.inf
    tails: dict[str, int] | None = None  # the retained sessions' tails, walked once: the pool stands still here
    index = 0
    while index < len(waiting):
        request = waiting.at(index)
        if index and (retention is None or not retention.holds(request.session_id)):
            if index >= MAX_PASSED_OVER:
                break
            index += 1
            continue
        protected = 0
        if retention is not None and len(retention):
            if tails is None and now - request.arrival_time < retention.window_s:
                tails = retention.tails(now)
            protected = retention.protected_from(tails, request, now)
            if protected:
                shut_until = min(shut_until, retention.next_expiry(), request.arrival_time + retention.window_s)
        if free - protected > request.blocked_at_free:
            return None  # it may fit: the next plan tries it
        slack = min(slack, request.blocked_at_free - (free - protected))
        if not (protected and index < MAX_PASSED_OVER):
            break
        index += 1
    return shut_until, slack


def complete_run(sched: Scheduler, result: RunResult) -> list[Sequence[RequestOutput]]:
    """:meth:`Scheduler.complete_run <tokensched.scheduler.Scheduler.complete_run>`: validate, then apply."""
    if sched._run is None:
        raise InvalidRequest(f"complete_run for step {result.first_step_id}, but no decode run is out")
    run, rows = sched._run
    first = run.first_step_id
    if result.first_step_id != first:
        raise InvalidRequest(f"complete_run for step {result.first_step_id}, but the run out starts at step {first}")
    steps, proposals = result.sampled_token_ids, result.draft_token_ids
    count = len(steps)
    where = f"run from step {first}"
    if not count or len(proposals) != count or len(result.elapsed) != count:
        raise InvalidRequest(f"{where}: {count} steps of tokens, {len(proposals)} of drafts")
    depth = run.depth
    cursor = replay(run, result)  # validates whole: raises before anything changes
    sched._run = None
    run.let_go_of_tables()
    special = cursor.special
    bulk = count - 1 if special else count
    outputs: list[Sequence[RequestOutput]] = []
    _apply_steps(sched, run, rows, result, cursor, bulk, outputs)
    tracker = sched.steps
    if run.launched and bulk:  # the step launched before the run was applied above
        step = tracker.oldest(first, "complete")
        step.move("complete")
        step.move("apply")
        tracker.close(step)
    _open_planned(sched, run, rows, cursor, range(bulk, count + depth - 1))  # in flight (or the special step)
    if special:
        sampled, proposed = steps[bulk], proposals[bulk]
        if bulk in cursor.chunks:  # the chunk row's empty row, as the single step's result has it
            sampled = [*sampled, []]
            proposed = None if proposed is None else [*proposed, []]
        last = StepResult(first + bulk, sampled, proposed, None, result.elapsed[bulk])
        outputs.append(sched.complete(last))
    return outputs


def fail_run(sched: Scheduler, error: BaseException) -> list[RequestOutput]:
    """:meth:`Scheduler.fail_run <tokensched.scheduler.Scheduler.fail_run>`: the run's first steps, failed singly.

    The steps a run holds when it fails are those it planned at its start
    (``depth`` of them: the one launched before it, if any, and those it
    launched itself), and a single-step engine would hold the same plans.
    So the run's planned steps are opened in the tracker as :meth:`plan`
    would have left them and each goes through :meth:`Scheduler.fail`,
    oldest first: every request in them is rolled back for a retry or
    finished with an error, and its blocks (those the run took at its start
    included) go back to the pool.
    """
    if sched._run is None:
        raise InvalidRequest("fail_run, but no decode run is out")
    run, rows = sched._run
    cursor = RunCursor(run)
    for j in range(run.depth):
        cursor.plan(j)  # planned when the run was handed out: the same drafts and chunk, no block taken again
    sched._run = None
    run.let_go_of_tables()
    _open_planned(sched, run, rows, cursor, range(run.depth))
    outputs: list[RequestOutput] = []
    for s in range(run.depth):
        outputs += sched.fail(run.first_step_id + s, error)
    return outputs


def _open_planned(sched: Scheduler, run: DecodeRun, rows: list[Request], cursor: RunCursor, steps: range) -> None:
    """Leave the run's ``steps`` (planned by ``cursor``) as single steps' plans leave them: their requests
    marked scheduled and, for a step launched by the run itself, the step open in the tracker."""
    tracker = sched.steps
    first = run.first_step_id
    chunks = cursor.chunks
    for s in steps:
        members = [rows[i] for i in run.group(s)]
        ns = _mark_planned(members, cursor.planned[s], first + s)
        nd = [q - 1 for q in ns]
        samples = [True] * len(ns)
        if s in chunks:  # the chunk row, last, planned as the single step plans it (it samples nothing)
            members.append(_mark_chunk(rows[-1], chunks[s], first + s))
            ns.append(chunks[s])
            nd.append(0)
            samples.append(False)
        if s >= run.launched:
            tracker.next_step_id = first + s
            tracker.open(Step(first + s, members, [r.epoch for r in members], ns, nd, samples))


def _apply_steps(
    sched: Scheduler,
    run: DecodeRun,
    rows: list[Request],
    result: RunResult,
    cursor: RunCursor,
    bulk: int,
    outputs: list[Sequence[RequestOutput]],
) -> None:
    """Apply the first ``bulk`` steps of ``result`` (none of which finished a row) in single-step order.

    Steps that only appended tokens are gathered per row and applied in
    one pass; in a step that filled, hashed or rolled back a block, the rows
    that did are brought up to date and go through :meth:`_apply_row` (which
    gives a rolled-back block back to the pool, as the single step does) and
    :meth:`_commit_fills`, the others append as in a plain step; the blocks
    a later step's plan needs are allocated right after the step whose
    completion planned it, so the pool sees the single steps' commits,
    releases and allocations in their order.
    """
    if not bulk:
        return
    first = run.first_step_id
    ids = run.request_ids
    pool = sched.pool
    bs = sched._bs
    depth = run.depth
    counts = [r.num_output_tokens for r in rows]
    cached = [r.num_cached_tokens for r in rows]
    new: list[list[int]] = [[] for _ in rows]
    last_step = [-1] * len(rows)
    drafts: list[list[int] | None] = [None] * len(rows)
    touched = set(cursor.touched)
    allocs = cursor.allocs
    planned = cursor.planned
    pending = pool.num_pending  # only step_completed and a touched step's per-request code change it here
    groups = [run.group(g) for g in range(depth)]
    chunks = cursor.chunks  # step -> its chunk's tokens (the last row's), for a run with a chunk row
    chunk_request = rows[-1]
    for j in range(bulk):
        sampled = result.sampled_token_ids[j]
        proposed = result.draft_token_ids[j]
        group = groups[j % depth]
        if j in touched:  # the rows that fill, hash or roll back a block go through the per-request code
            members = [rows[i] for i in group]
            verified = planned[j]
            ns = [1 + len(d) for d in verified]
            step = Step(first + j, members, [r.epoch for r in members], ns, [q - 1 for q in ns], [True] * len(ns))
            row_result = StepResult(first + j, sampled, proposed, None, result.elapsed[j])
            now = sched.clock()
            told: list[RequestOutput] = []
            fills: list[Request] = []
            for slot, i in enumerate(group):
                request = rows[i]
                tokens = sampled[slot]
                state = request.state
                assert type(state) is Decoding
                before = state.num_computed + len(new[i])  # its tokens not yet caught up included
                at = before + len(tokens)
                if (at + 1) // bs > before // bs or at <= (len(state.blocks) - 1) * bs:
                    _catch_up(sched, request, new[i], drafts[i], first + last_step[i])
                    new[i] = []
                    drafts[i] = None
                    _mark_planned([request], [verified[slot]], first + j)
                    sched._apply_row(slot, request, step, row_result, now, told, fills)
                    counts[i] = request.num_output_tokens
                    last_step[i] = -1  # applied: nothing to catch up
                else:  # only appends tokens, as in a plain step
                    count = counts[i] = counts[i] + len(tokens)
                    new[i] += tokens
                    last_step[i] = j
                    told.append(RequestOutput(ids[i], tokens, None, None, count, cached[i]))
                    if proposed is not None:
                        drafts[i] = proposed[slot]
            if j in chunks:  # the chunk row commits its full blocks before the decodes' fills, as complete() does
                _apply_chunk(sched, chunk_request, chunks[j])
            if fills:
                sched._commit_fills(fills)
            outputs.append(told)
            pending = pool.num_pending
            if sched._truncated and j + depth in planned:
                sched._truncated = {}  # the plan of step j + depth carried the rolled-back rows' tables
        else:  # its outputs as columns (PlainStepOutputs builds the RequestOutputs if they are read)
            step_counts: list[int] = []
            for slot, i in enumerate(group):
                tokens = sampled[slot]
                count = counts[i] = counts[i] + len(tokens)
                new[i] += tokens
                last_step[i] = j
                step_counts.append(count)
            if proposed is not None:
                for slot, i in enumerate(group):
                    drafts[i] = proposed[slot]
            outputs.append(PlainStepOutputs(ids, group, sampled, step_counts, cached))
            if j in chunks:
                _apply_chunk(sched, chunk_request, chunks[j])
        if pending:
            pool.step_completed(first + j)
            pending = pool.num_pending
        if allocs:
            for i, n in allocs.get(j + depth, ()):  # the plan of step j + depth, made once step j completed
                _grow(pool, rows[i], n)
    for i, r in enumerate(rows):
        if last_step[i] >= 0:
            _catch_up(sched, r, new[i], drafts[i], first + last_step[i])
    if chunks:
        chunk_request.planned_in = first + bulk - 1
    sched.steps.next_step_id = max(sched.steps.next_step_id, first + bulk)
    sched.pool.step_completed(first + bulk - 1)


def _catch_up(sched: Scheduler, request: Request, tokens: list[int], drafts: list[int] | None, step_id: int) -> None:
    """Apply a run's plain steps to ``request`` at once: ``tokens`` appended, the last in step ``step_id``."""
    if not tokens:
        return
    state = request.state
    assert type(state) is Decoding
    request.tokens.extend(tokens)
    request.last_token = tokens[-1]
    state.num_computed = state.num_scheduled = state.num_computed + len(tokens)
    request.planned_in = step_id
    request.inflight_steps = 0
    request.inflight_samples = 0
    if drafts is not None:
        request.draft_tokens = drafts[: sched._k_spec]


def _apply_chunk(sched: Scheduler, request: Request, n: int) -> None:
    """Apply a run's step to its chunk row as :meth:`Scheduler._apply_row` applies a non-final chunk: ``n`` more
    positions computed, its full blocks committed; nothing sampled, nothing told."""
    state = request.state
    assert type(state) is Prefilling
    state.num_computed = state.num_scheduled = state.num_computed + n
    if sched._caching:
        sched._commit_full_blocks(request, state)


def _mark_chunk(request: Request, n: int, step_id: int) -> Request:
    """Record on the chunk row that step ``step_id`` schedules its next ``n`` positions (left open); returns it."""
    state = request.state
    assert type(state) is Prefilling
    state.num_scheduled = state.num_computed + n
    request.planned_in = step_id
    request.inflight_steps = 1
    return request


def _mark_planned(members: list[Request], drafts: list[list[int]], step_id: int) -> list[int]:
    """Record on each decode of ``members`` that step ``step_id`` schedules it with ``drafts``; returns its tokens."""
    ns = [1 + len(d) for d in drafts]
    for r, q in zip(members, ns, strict=True):
        state = r.state
        assert type(state) is Decoding
        state.num_scheduled = state.num_computed + q
        r.planned_in = step_id
        r.inflight_steps = 1
        r.inflight_samples = q
    return ns


def _grow(pool: BlockPool, request: Request, count: int) -> Decoding | Prefilling:
    """Give a row of a run ``count`` new blocks, taken as the single step would take them; returns its state."""
    state = request.state
    assert type(state) is Decoding or type(state) is Prefilling
    if count == 1:
        state.blocks.append(pool.allocate_one())
    else:
        state.blocks.extend(pool.allocate(count))
    return state
