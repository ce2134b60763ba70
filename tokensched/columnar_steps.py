"""The scheduler's side of the columnar decode path: planning and applying a step of plain decodes as arrays.

The columns themselves and when they may stand in for the typed machines are
in :mod:`tokensched.decode_columns`; :meth:`Scheduler.plan
<tokensched.scheduler.Scheduler.plan>` and :meth:`Scheduler.complete
<tokensched.scheduler.Scheduler.complete>` try these first. They live apart
from the per-request path because they are one concept (a steady running set
stepped in a few array operations, the rare rows handed back to the
per-request code) that the rest of the scheduler never needs; like
:mod:`tokensched.run_steps`, they read and move the scheduler's own state, as
its methods would, so they stay in this package beside it.
"""

from __future__ import annotations

from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from tokensched.decode_columns import DecodeColumns
from tokensched.machines.request import Request
from tokensched.machines.step import Step
from tokensched.plan import NO_BLOCKS, NO_DRAFTS, OutputBatch, PlanArrays, RequestOutput, StepPlan, StepResult
from tokensched.tokens import INT32_MAX

if TYPE_CHECKING:
    from tokensched.scheduler import Scheduler


def plan_fast(sched: Scheduler) -> StepPlan | None:
    """Plan a step of plain decodes from the columns, or None when the per-request path must plan it.

    Builds exactly the plan :meth:`Scheduler._schedule_running` would (see
    :mod:`tokensched.decode_columns` for when that holds), with the same
    blocks allocated in the same order.
    """
    running = sched._running
    n = len(running)
    bs = sched._bs
    budget = sched.config.max_batched_tokens
    if sched.steps or sched.waiting or sched._k_spec or not n or n > budget or sched.host is not None:
        return None  # the host tier's write-backs are planned by the per-request path
    pool = sched.pool
    if pool.num_free < -(-budget // bs) + n:
        return None  # the reference would serve the running set by victim key
    cols = sched._cols
    if cols is None:
        requests = list(running.values())
        if not DecodeColumns.eligible(requests, bs, sched._caching):
            return None
        cols = sched._cols = DecodeColumns(requests, bs, sched.config.max_model_len)
    step_id = sched.steps.next_step_id
    pos = cols.pos
    slot = cols.slot + 1
    new_blocks = [NO_BLOCKS] * n
    starts = cols.rows_at(0)
    if starts:
        states = cols.states
        for i in starts:
            block = pool.allocate_one()
            states[i].blocks.append(block)
            new_blocks[i] = (block,)
            slot[i] = block * bs
    cols.slot = slot
    cols.in_flight = cols.last_step = step_id
    sched.steps.open(Step(step_id, cols.requests, cols.epochs, [1] * n, [0] * n, [True] * n))
    removed = tuple(sched._removed)
    sched._removed.clear()
    truncated, sched._truncated = sched._truncated, {}
    offsets = np.arange(n + 1, dtype=np.int64)
    tokens = cols.last.astype(np.int32)
    computed = pos.copy()
    return StepPlan(
        step_id=step_id,
        block_size=bs,
        new_requests=(),
        removed_request_ids=removed,
        request_ids=list(cols.ids),
        num_computed_tokens=computed.tolist(),
        token_offsets=offsets.tolist(),
        token_ids=tokens.tolist(),
        slot_mapping=slot.tolist(),
        new_block_ids=new_blocks,
        sample=[True] * n,
        draft_token_ids=[NO_DRAFTS] * n,
        truncated_block_tables=truncated,
    ).attach_arrays(PlanArrays(computed, offsets, tokens, computed, slot.copy()))


def complete_fast(sched: Scheduler, cols: DecodeColumns, step: Step, result: StepResult) -> OutputBatch | None:
    """Apply a fast step's result over the columns; None (nothing changed) when the per-request path must.

    Rows that fill a block, sample a stop or reach their length are
    written back and applied by :meth:`Scheduler._apply_row`, in plan order, as the
    per-request path would; the others move in a few array operations.
    """
    rows = result.sampled_token_ids
    n = len(cols)
    if result.draft_token_ids is not None or result.logprobs is not None or len(rows) != n or not n:
        return None
    flat = list(chain.from_iterable(rows))
    if len(flat) != n or not all(rows) or not set(map(type, flat)) <= {int}:
        return None  # not one plain int a row (n tokens, no empty row): validate_result explains
    if min(flat) < 0 or max(flat) > INT32_MAX:
        return None
    sampled = np.array(flat, dtype=np.int64)
    pos = cols.pos
    rare_rows = cols.finishing_rows(flat, sampled)  # the per-request code applies them
    # rows that fill a block and go on: their tokens are written back and the blocks committed in one batch
    fill_rows = cols.rows_at(sched._bs - 1) if sched._caching else []
    if rare_rows and fill_rows:
        rare_set = set(rare_rows)
        fill_rows = [i for i in fill_rows if i not in rare_set]
    step.move("complete")
    now = sched.clock()
    events = sched._take_events()
    special: dict[int, RequestOutput] = {}
    fills: list[Request] = []
    requests = cols.requests
    for i in rare_rows:
        cols.flush_row(i)
        told: list[RequestOutput] = []
        sched._apply_row(i, requests[i], step, result, now, told, fills)
        special[i] = told[0]
    for i in fill_rows:
        cols.flush_tokens(i, flat[i])
        fills.append(requests[i])
    cols.in_flight = -1
    outputs = OutputBatch(events, cols.ids, rows, pos + cols.out_base, cols.cached, special)
    cols.advance(sampled)
    if fill_rows:
        cols.flushed[fill_rows] = cols.npend
    if rare_rows:
        keep = np.ones(n, dtype=np.bool_)
        running = sched._running
        for i in rare_rows:
            cols.flushed[i] = cols.npend
            if requests[i].request_id in running:
                cols.reload_row(i)
            else:
                keep[i] = False
        if not keep.all():
            cols.keep(keep)
    if fills:
        sched._commit_fills(fills)
    step.move("apply")
    sched.steps.close(step)
    sched.pool.step_completed(step.step_id)
    return outputs
