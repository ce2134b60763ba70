"""Whole-scheduler invariants: what ``Scheduler.check_invariants`` proves after any call.

O(everything): for tests and debugging, never the hot path.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING

from tokensched.errors import InvariantViolation
from tokensched.machines.blocks import BlockState
from tokensched.machines.request import Decoding, Finished, Preempted, Prefilling, Waiting
from tokensched.policies.base import KeyDependence, key_dependence

if TYPE_CHECKING:
    from tokensched.scheduler import Scheduler


def check_scheduler(s: Scheduler) -> None:
    problems: list[str] = []
    holders: Counter[int] = Counter()
    bs = s.config.block_size
    waiting_ids = [r.request_id for r in s.waiting]
    if len(set(waiting_ids)) != len(waiting_ids):
        problems.append("a request is queued twice")
    if set(waiting_ids) & set(s.running):
        problems.append("a request is both waiting and running")
    if set(waiting_ids) | set(s.running) != set(s.live):
        problems.append("live requests are not exactly the waiting and the running ones")
    if len(s.running) > s.config.max_running:
        problems.append(f"{len(s.running)} running > max_running {s.config.max_running}")
    if len(s.steps) > s.config.max_steps_in_flight:
        problems.append(f"{len(s.steps)} steps in flight > {s.config.max_steps_in_flight}")
    for r in s.waiting:
        if not isinstance(r.state, Waiting | Preempted):
            problems.append(f"waiting request {r.request_id!r} in state {type(r.state).__name__}")
    for rid, r in s.running.items():
        state = r.state
        if not isinstance(state, Prefilling | Decoding):
            problems.append(f"running request {rid!r} in state {type(state).__name__}")
            continue
        holders.update(state.blocks)
        if len(set(state.blocks)) != len(state.blocks):
            problems.append(f"request {rid!r} holds a block twice")
        if not state.num_computed <= state.num_scheduled <= len(r.tokens) + r.inflight_samples:
            problems.append(f"request {rid!r}: computed {state.num_computed}, scheduled {state.num_scheduled}")
        if r.last_token != r.tokens[-1]:
            problems.append(f"request {rid!r}: last_token {r.last_token} but its history ends in {r.tokens[-1]}")
        if len(state.blocks) < -(-state.num_scheduled // bs):
            problems.append(f"request {rid!r}: {len(state.blocks)} blocks for {state.num_scheduled} positions")
        if r.num_output_tokens > r.max_tokens:
            problems.append(f"request {rid!r}: {r.num_output_tokens} outputs > max_tokens {r.max_tokens}")
        for i, block in enumerate(state.blocks):
            bstate = s.pool.state(block)
            if bstate not in (BlockState.OWNED, BlockState.COMMITTED):
                problems.append(f"request {rid!r} holds block {block} in state {bstate.name}")
            if i < state.num_committed:
                if bstate is not BlockState.COMMITTED:
                    problems.append(f"request {rid!r}: block {block} should be committed")
                elif s.pool.block_hash(block) != r.block_hashes[i]:
                    problems.append(f"request {rid!r}: block {block} hash does not match its tokens")
            elif bstate is not BlockState.OWNED:
                problems.append(f"request {rid!r}: uncommitted block {block} in state {bstate.name}")
        if r.inflight_steps < 0 or r.inflight_samples < 0:
            problems.append(f"request {rid!r}: negative in-flight counters")
    for rid, r in s.live.items():
        if isinstance(r.state, Finished):
            problems.append(f"finished request {rid!r} is still live")
    if s.host is not None:  # a write-back in flight holds its device block like a request
        holders.update(s.host.tier.writing_blocks())
        try:
            s.host.tier.check_invariants()
        except InvariantViolation as e:
            problems.append(str(e))
    try:
        s.pool.check_invariants(dict(holders))
    except InvariantViolation as e:
        problems.append(str(e))
    problems.extend(_prefix_key_problems(s))
    if problems:
        raise InvariantViolation("; ".join(problems[:10]))


def _prefix_key_problems(s: Scheduler) -> list[str]:
    """The tracked cached prefixes are what a fresh walk gives, and a prefix-keyed queue is in its fresh order."""
    keys = s._prefix_keys
    if keys is None:
        return []
    waiting = list(s.waiting)  # reading the queue applies the pool events heard since the last admission
    problems: list[str] = []
    try:
        keys.check(waiting)
    except InvariantViolation as e:
        problems.append(str(e))
    if key_dependence(s.policy) is KeyDependence.CACHED_PREFIX:
        ctx = s.policy_context()
        fresh = [s.policy.admission_key(r, ctx) for r in waiting]
        queued = [s.waiting.key_at(i) for i in range(len(waiting))]
        if fresh != queued:
            problems.append("a waiting request is queued under a key its policy no longer gives it")
        if any(b < a for a, b in itertools.pairwise(queued)):
            problems.append("the prefix-keyed queue is out of key order")
    return problems
