"""A finishing request's table built from the run it was admitted with, against the whole-table conversion.

A request admitted with a long matched run keeps that run as an array
(``Scheduler._head_runs``); at its finish the table's array is that head plus
the blocks added since, instead of the whole list converted. Two schedulers
get the same random traffic (long prompts sharing long prefixes, sessions,
small pools that force preemption, aborts, failed steps, drafts, two steps in
flight); the reference converts every table whole (``head_runs_from =
sys.maxsize``). After every operation the plans, outputs, pools, the runs the
matcher keeps and the requests must be equal, and the table each finish
released must be the request's block list.
"""

from __future__ import annotations

import os
import sys
from typing import Any
from unittest.mock import patch

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from tests.twins import call, complete_oldest, plan_key, pool_key, request_key
from tokensched import RequestSpec, Scheduler, SchedulerConfig
from tokensched.machines.blocks import BlockPool
from tokensched.machines.request import held_blocks
from tokensched.plan import StepPlan

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
BS = 4
VOCAB = 7

ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"), st.integers(40, 110), st.integers(1, 12), st.integers(0, 1), st.booleans(), st.booleans()
        ),
        *[st.tuples(st.just("step"), st.integers(0, 2**31 - 1))] * 10,
        st.tuples(st.just("complete"), st.integers(0, 2**31 - 1)),
        st.tuples(st.just("abort"), st.integers(0, 50)),
        st.tuples(st.just("fail")),
    ),
    min_size=20,
    max_size=120,
)


def kept_runs(s: Scheduler) -> Any:
    """The runs the matcher keeps for later requests (recent long runs and sessions' last turns)."""
    runs = []
    for r in [*s.matcher._recent_runs, *s.matcher._sessions.values()]:
        run = r.kv_run
        runs.append((r.request_id, None if run is None else (run[0].tolist(), run[1].tolist(), run[0].flags.writeable)))
    return runs


_EXPECTED: dict[int, list[list[int]]] = {}  # per pool (by id): the block list of the finish under way
_release_table = BlockPool.release_table


def _checked_release_table(pool: BlockPool, ids: npt.NDArray[np.int64], hold: int | None) -> None:
    """``BlockPool.release_table``, after checking the table is the finishing request's block list, read-only."""
    expected = _EXPECTED.get(id(pool))
    if expected:
        assert ids.dtype == np.int64 and not ids.flags.writeable
        assert ids.tolist() == expected[-1]
    _release_table(pool, ids, hold)


def watch_finishes(s: Scheduler, heads_used: list[int]) -> None:
    """Record each finishing request's block list for the release check (and count the heads used)."""
    finish = s._finish
    expected = _EXPECTED.setdefault(id(s.pool), [])

    def checked_finish(request: Any, reason: Any, event: str) -> None:
        expected.append(list(held_blocks(request.state)))
        if request.request_id in s._head_runs:
            heads_used.append(len(s._head_runs[request.request_id]))
        finish(request, reason, event)
        expected.pop()

    s._finish = checked_finish  # type: ignore[method-assign]


def drive_pair(ops: list[tuple[Any, ...]], num_blocks: int, in_flight: int, k_spec: int, budget: int) -> int:
    """Run ``ops`` on a scheduler with head runs and on the reference; returns how many finishes used a head."""
    config = SchedulerConfig(
        num_blocks=num_blocks,
        block_size=BS,
        max_batched_tokens=budget,
        max_steps_in_flight=in_flight,
        max_model_len=160,
        num_speculative_tokens=k_spec,
    )
    clock = [0.0]
    pair = [Scheduler(config, clock=lambda: clock[0]) for _ in range(2)]
    pair[1].head_runs_from = sys.maxsize
    heads_used: list[int] = []
    _EXPECTED.clear()
    watch_finishes(pair[0], heads_used)
    watch_finishes(pair[1], [])
    plans: list[list[StepPlan]] = [[], []]
    with patch.object(BlockPool, "release_table", _checked_release_table):
        _drive(pair, plans, ops, clock)
    assert request_key(pair[0]) == request_key(pair[1])
    for s in pair:
        s.check_invariants()
    return len(heads_used)


def _drive(pair: list[Scheduler], plans: list[list[StepPlan]], ops: list[tuple[Any, ...]], clock: list[float]) -> None:
    seq = 0
    for op in ops:
        clock[0] += 0.5
        kind = op[0]
        got = []
        for which, s in enumerate(pair):
            if kind == "submit":
                _, length, max_tokens, prefix, eos, whole = op
                # Two long shared prefixes (80 tokens: 20 blocks), then the request's own tokens; or the prefix's
                # tokens only, so that a repeated prompt can be cached whole (the last block is then recomputed).
                own = 80 if not whole else 10**6
                prompt = [(prefix * 5 + i) % VOCAB if i < own else (seq + i) % VOCAB for i in range(length)]
                spec = RequestSpec(
                    request_id=f"r{seq}",
                    prompt_token_ids=prompt,
                    max_tokens=max_tokens,
                    eos_token_id=0 if eos else None,
                    session_id=f"s{prefix}" if seq % 2 else None,
                )
                got.append(call(s.submit, spec))
            elif kind == "step":
                plan = s.plan()
                got.append(plan_key(plan))
                if plan is not None:
                    plans[which].append(plan)
                    got.append(complete_oldest(s, plans[which], op[1], vocab=VOCAB, max_drafts=2))
            elif kind == "complete":
                got.append(complete_oldest(s, plans[which], op[1], vocab=VOCAB, max_drafts=2) if plans[which] else None)
            elif kind == "abort":
                live = sorted(s._live)
                got.append(call(s.abort, live[op[1] % len(live)]) if live else None)
            elif plans[which]:
                got.append(list(s.fail(plans[which].pop(0).step_id, RuntimeError("lost"))))
            got.append(pool_key(s))
            got.append(kept_runs(s))
        assert got[: len(got) // 2] == got[len(got) // 2 :], f"after {op}"
        assert set(pair[0]._head_runs) <= set(pair[0].running) and not pair[1]._head_runs
        seq += kind == "submit"


@settings(
    max_examples=max(1, EXAMPLES // 5),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=ops,
    num_blocks=st.sampled_from([40, 64, 100, 160]),
    in_flight=st.integers(1, 2),
    k_spec=st.sampled_from([0, 0, 2]),
    budget=st.sampled_from([24, 64, 200]),
)
def test_finish_tables_from_head_runs_equal_reference(
    ops: list[tuple[Any, ...]], num_blocks: int, in_flight: int, k_spec: int, budget: int
) -> None:
    used = drive_pair(ops, num_blocks, in_flight, k_spec, budget)
    hypothesis_event(f"finishes with a head run: {min(used, 3)}{'+' if used >= 3 else ''}")


def test_the_head_run_path_is_taken_and_equals_reference() -> None:
    """A plain case: a second request repeating a 20-block prefix finishes through its kept head."""
    traffic: list[tuple[Any, ...]] = [("submit", 100, 4, 1, False, False)]
    traffic += [("step", i) for i in range(12)]
    traffic += [("submit", 104, 4, 1, False, False), ("submit", 96, 3, 0, False, True)]
    traffic += [("step", i) for i in range(12)]
    traffic += [("submit", 96, 3, 0, False, True)]
    traffic += [("step", i) for i in range(12)]
    assert drive_pair(traffic, 160, 1, 0, 200) >= 2
