"""The plan side's fast paths against the reference: identical plans, outputs, pools and queues after every step.

Two schedulers get the same random traffic; one plans with ``fast_decode=True``
(the running set's rows in :mod:`tokensched.plan_rows`, admission not entered
while the running set is full), the other is the reference
(``fast_decode=False``). The traffic is what those paths must get right:
speculative decodes whose drafts are capped by the room and the budget, prefill
chunks beside them, pools small enough that the running set is served by victim
key with preemptions and starvation, a running-set cap that keeps requests
waiting, and policies whose queues move with the cache (prefix-aware, re-keyed
from the pool's events) or with the clock (re-sorted whole now and then). After
every operation the plans, outputs and pools must be equal, and at random points
the requests and the waiting queue's order (reading the queue applies the
cache's pending events, so not after every operation).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.twins import call, complete_oldest, plan_key, pool_key
from tokensched import RequestSpec, Scheduler, SchedulerConfig
from tokensched.machines.request import Decoding, Prefilling, Request
from tokensched.plan import StepPlan
from tokensched.policies import FCFSPolicy, PrefixAwarePolicy
from tokensched.policies.base import Policy, PolicyContext, SortKey

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4
VOCAB = 6


class ShortestWaitingLongFirst:
    """A policy keyed on the clock (``KeyDependence.ANY``): the queue is re-sorted whole now and then."""

    name = "clock-keyed"
    dynamic = True

    def admission_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (int(ctx.now - request.arrival_time) % 3, -request.num_prompt_tokens, request.seq)

    def victim_key(self, request: Request, ctx: PolicyContext) -> SortKey:
        return (-request.arrival_time, request.seq)


POLICIES: dict[str, type[Policy]] = {
    "fcfs": FCFSPolicy,
    "prefix-aware": PrefixAwarePolicy,
    "clock-keyed": ShortestWaitingLongFirst,
}

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


def request_key(s: Scheduler) -> Any:
    out = []
    for rid, r in s.live.items():
        state = r.state
        cursor = (
            (state.num_computed, state.num_scheduled, state.num_committed, list(state.blocks))
            if type(state) is Prefilling or type(state) is Decoding
            else ()
        )
        out.append((rid, type(state).__name__, cursor, r.tokens.tolist(), list(r.draft_tokens), r.blocked_at_free))
        out.append((r.epoch, r.inflight_steps, r.inflight_samples, r.planned_in))
    return out, list(s.running), [r.request_id for r in s.waiting]


def drive_pair(ops: list[tuple[Any, ...]], config: SchedulerConfig, policy: str) -> None:
    clock = [0.0]
    pair = [Scheduler(config, POLICIES[policy](), clock=lambda: clock[0], fast_decode=fast) for fast in (True, False)]
    plans: list[list[StepPlan]] = [[], []]
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
                    session_id=f"s{prefix}" if seq % 2 else None,
                )
                got.append(call(s.submit, spec))
            elif kind in ("step", "plan"):
                plan = s.plan()
                got.append(plan_key(plan))
                if plan is not None:
                    plans[which].append(plan)
                    if kind == "step":
                        got.append(complete_oldest(s, plans[which], op[1], vocab=VOCAB, max_drafts=3))
            elif kind == "complete":
                got.append(complete_oldest(s, plans[which], op[1], vocab=VOCAB, max_drafts=3) if plans[which] else None)
            elif kind == "abort":
                live = sorted(s._live)
                got.append(call(s.abort, live[op[1] % len(live)]) if live else None)
            elif kind == "fail":
                if plans[which]:
                    got.append(list(s.fail(plans[which].pop(0).step_id, RuntimeError("lost"))))
            else:
                got.append(request_key(s))
            got.append(pool_key(s))
        assert got[: len(got) // 2] == got[len(got) // 2 :], f"after {op}"
        seq += kind == "submit"
    assert request_key(pair[0]) == request_key(pair[1])
    for s in pair:
        s.check_invariants()


@settings(
    max_examples=max(1, EXAMPLES // 2),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=ops,
    policy=st.sampled_from(sorted(POLICIES)),
    num_blocks=st.sampled_from([10, 16, 24, 64]),
    in_flight=st.sampled_from([1, 1, 2]),
    k_spec=st.sampled_from([0, 1, 2, 3]),
    caching=st.booleans(),
    budget=st.sampled_from([3, 4, 8, 16]),
    max_running=st.sampled_from([1, 2, 3, 64]),
)
def test_plan_fast_paths_equal_reference(
    ops: list[tuple[Any, ...]],
    policy: str,
    num_blocks: int,
    in_flight: int,
    k_spec: int,
    caching: bool,
    budget: int,
    max_running: int,
) -> None:
    config = SchedulerConfig(
        num_blocks=num_blocks,
        block_size=BS,
        max_batched_tokens=max(budget, 1 + k_spec),  # room for a decode and its drafts
        max_steps_in_flight=in_flight,
        max_model_len=40,
        num_speculative_tokens=k_spec,
        enable_prefix_caching=caching,
        max_running=max_running,
    )
    drive_pair(ops, config, policy)
