"""The columnar decode path against the per-request path: identical plans, outputs, requests and pools.

Two schedulers get the same random traffic (submissions with shared
prefixes, sessions, eos and stop ids, small pools that force preemption,
aborts, failed steps, drafts, up to two steps in flight); one may take the
columnar decode path (``fast_decode=True``, the default), the other never does.
After every operation the plans, outputs and pool states must be equal, and
at random points (every read materialises the columns, so not after every
operation) the requests too.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.errors import TokenschedError
from tokensched.machines.request import Decoding, Prefilling
from tokensched.plan import StepPlan

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4
VOCAB = 6  # small, so that sampled tokens hit eos and stop ids often

ops = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.integers(1, 14), st.integers(1, 12), st.integers(0, 3), st.booleans()),
        *[st.tuples(st.just("step"), st.integers(0, 2**31 - 1))] * 6,
        st.tuples(st.just("plan")),
        st.tuples(st.just("complete"), st.integers(0, 2**31 - 1)),
        st.tuples(st.just("abort"), st.integers(0, 50)),
        st.tuples(st.just("fail")),
        st.tuples(st.just("check")),
    ),
    min_size=30,
    max_size=80,
)


def plan_key(plan: StepPlan | None) -> Any:
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


def call(s: Scheduler, f: Any, *args: Any) -> Any:
    try:
        return ("ok", f(*args))
    except TokenschedError as e:
        return ("error", type(e).__name__, str(e))


@settings(
    max_examples=max(1, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=ops,
    num_blocks=st.sampled_from([10, 24, 40, 64]),
    in_flight=st.sampled_from([1, 1, 2]),
    k_spec=st.sampled_from([0, 0, 0, 2]),
    caching=st.booleans(),
    budget=st.sampled_from([3, 8, 16]),
)
def test_fast_path_equals_reference(
    ops: list[tuple[Any, ...]], num_blocks: int, in_flight: int, k_spec: int, caching: bool, budget: int
) -> None:
    config = SchedulerConfig(
        num_blocks=num_blocks,
        block_size=BS,
        max_batched_tokens=budget,
        max_steps_in_flight=in_flight,
        max_model_len=40,
        num_speculative_tokens=k_spec,
        enable_prefix_caching=caching,
    )
    clock = [0.0]
    pair = [Scheduler(config, clock=lambda: clock[0], fast_decode=fast) for fast in (True, False)]
    plans: list[list[StepPlan]] = [[], []]
    fast_steps = 0
    seq = 0
    for op in ops:
        clock[0] += 0.5
        kind = op[0]
        got = []
        for which, s in enumerate(pair):
            if kind == "submit":
                _, length, max_tokens, prefix, eos = op
                prompt = [(seq * 3 + i) % VOCAB if i >= 6 else (prefix + i) % VOCAB for i in range(length)]
                spec = RequestSpec(
                    request_id=f"r{seq}",
                    prompt_token_ids=prompt,
                    max_tokens=max_tokens,
                    eos_token_id=0 if eos else None,
                    stop_token_ids=frozenset({5}) if seq % 3 == 0 else frozenset(),
                    session_id=f"s{prefix}" if seq % 2 else None,
                )
                got.append(call(s, s.submit, spec))
            elif kind in ("step", "plan"):
                plan = s.plan()
                got.append(plan_key(plan))
                if plan is not None:
                    plans[which].append(plan)
                if kind == "step" and plan is not None:
                    got.append(complete(s, plans[which], op[1]))
            elif kind == "complete":
                got.append(complete(s, plans[which], op[1]) if plans[which] else None)
            elif kind == "abort":
                live = sorted(s._live)
                got.append(call(s, s.abort, live[op[1] % len(live)]) if live else None)
            elif kind == "fail":
                if plans[which]:
                    got.append(list(s.fail(plans[which].pop(0).step_id, RuntimeError("lost"))))
            else:
                got.append(request_key(s))
            got.append(pool_key(s))
            if which == 0 and s._cols is not None:
                fast_steps += 1
        assert got[: len(got) // 2] == got[len(got) // 2 :], f"after {op}"
        seq += kind == "submit"
    event(f"operations with decode columns live: {'some' if fast_steps else 'none'}")
    assert request_key(pair[0]) == request_key(pair[1])
    for s in pair:
        s.check_invariants()


def complete(s: Scheduler, plans: list[StepPlan], seed: int) -> Any:
    """Complete the oldest step in flight with tokens drawn from ``seed`` (accepting some drafts)."""
    plan = plans.pop(0)
    rng = np.random.default_rng(seed)
    rows = []
    drafts = []
    for i in range(plan.num_requests):
        if not plan.sample[i]:
            rows.append([])
        else:
            accepted = int(rng.integers(0, len(plan.draft_token_ids[i]) + 1))
            rows.append([int(t) for t in rng.integers(0, VOCAB, 1 + accepted)])
        drafts.append([int(t) for t in rng.integers(0, VOCAB, int(rng.integers(0, 3)))])
    with_drafts = s.config.num_speculative_tokens > 0
    result = StepResult(plan.step_id, rows, drafts if with_drafts else None)
    return [
        (o.request_id, list(o.new_token_ids), o.finish_reason, o.num_output_tokens, o.num_cached_tokens, o.event)
        for o in s.complete(result)
    ]
