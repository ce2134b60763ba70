"""For the property tests that run a fast path and its reference side by side ("twins"): the readings compared.

A fast path is equal to its reference when, after the same traffic, both
schedulers answer the same and their pools and requests read the same; the
readings and the calls that drive both are here, so that every such test
compares the same things.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokensched import Scheduler, StepResult
from tokensched.errors import TokenschedError
from tokensched.machines.request import Decoding, Prefilling
from tokensched.plan import StepPlan


def call(f: Any, *args: Any) -> Any:
    """``f(*args)``'s answer, or the typed error it raised (both twins must raise the same)."""
    try:
        return ("ok", f(*args))
    except TokenschedError as e:
        return ("error", type(e).__name__, str(e))


def complete_oldest(s: Scheduler, plans: list[StepPlan], seed: int, *, vocab: int, max_drafts: int) -> Any:
    """Complete the oldest step in flight with tokens drawn from ``seed`` (accepting some drafts); the outputs."""
    plan = plans.pop(0)
    rng = np.random.default_rng(seed)
    rows = []
    drafts = []
    for i in range(plan.num_requests):
        if not plan.sample[i]:
            rows.append([])
        else:
            accepted = int(rng.integers(0, len(plan.draft_token_ids[i]) + 1))
            rows.append([int(t) for t in rng.integers(0, vocab, 1 + accepted)])
        drafts.append([int(t) for t in rng.integers(0, vocab, int(rng.integers(0, max_drafts + 1)))])
    result = StepResult(plan.step_id, rows, drafts if s.config.num_speculative_tokens else None)
    return [
        (o.request_id, list(o.new_token_ids), o.finish_reason, o.num_output_tokens, o.num_cached_tokens, o.event)
        for o in s.complete(result)
    ]


def plan_key(plan: StepPlan | None) -> Any:
    """Everything a plan tells an executor (its arrays checked against its lists on the way)."""
    if plan is None:
        return None
    a = plan.arrays()
    assert a.token_ids.tolist() == list(plan.token_ids)
    assert a.slot_mapping.tolist() == list(plan.slot_mapping)
    assert a.token_offsets.tolist() == list(plan.token_offsets)
    assert a.num_computed_tokens.tolist() == list(plan.num_computed_tokens)
    positions = [
        c + j
        for c, lo, hi in zip(plan.num_computed_tokens, plan.token_offsets, plan.token_offsets[1:], strict=False)
        for j in range(hi - lo)
    ]
    assert a.positions.tolist() == positions
    return (
        plan.step_id,
        [
            (n.request_id, list(n.token_ids), n.block_ids, n.num_cached_tokens, n.num_output_tokens)
            for n in plan.new_requests
        ],
        plan.removed_request_ids,
        list(plan.request_ids),
        list(plan.num_computed_tokens),
        list(plan.token_offsets),
        list(plan.token_ids),
        list(plan.slot_mapping),
        list(plan.new_block_ids),
        list(plan.sample),
        list(plan.draft_token_ids),
        plan.truncated_block_tables,
    )


def pool_key(s: Scheduler) -> Any:
    """Every block's state, refcount and hash, the free and pending counts, and the eviction order."""
    pool = s.pool
    n = s.config.num_blocks
    return (
        [int(pool.state(b)) for b in range(n)],
        [pool.refcount(b) for b in range(n)],
        [pool.block_hash(b) for b in range(n)],
        pool.num_free,
        pool.num_pending,
        pool.eviction.order(),
    )


def request_key(s: Scheduler) -> Any:
    """Every live request's state, cursor, tokens, hashes and in-flight counters; the running and waiting order."""
    out = []
    for rid, r in s.live.items():
        state = r.state
        cursor = (
            (state.num_computed, state.num_scheduled, state.num_committed, list(state.blocks))
            if type(state) is Prefilling or type(state) is Decoding
            else ()
        )
        out.append((rid, type(state).__name__, cursor, r.tokens.tolist(), r.last_token, list(r.block_hashes)))
        out.append((r.epoch, r.inflight_steps, r.inflight_samples, r.planned_in, list(r.draft_tokens)))
    return out, list(s.running), [r.request_id for r in s.waiting]
