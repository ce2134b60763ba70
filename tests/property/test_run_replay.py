"""The lean replay of a run's result against the checking cursor replay: same acceptances, state and errors.

Runs are drawn directly (one or two groups, drafts or none, crossing blocks
or not, stop ids and length limits close by), a result is walked through a
:class:`RunCursor` the way an executor walks it, and then maybe corrupted
(a token out of range or of the wrong type, a row or token too many or too
few, a step past the run's end, drafts where speculation is off). Both
replays must then accept it with identical cursors or refuse it with the
same error.
"""

from __future__ import annotations

import math
import os
from typing import Any

import attrs
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.errors import InvalidRequest
from tokensched.run_replay import reference_replay, replay
from tokensched.tokens import INT32_MAX

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))
VOCAB = 20  # sampled tokens hit the stop ids (drawn among the first few) now and then

BAD_TOKENS: list[Any] = [-1, INT32_MAX + 1, True, 1.0, "1", [1], None]


@st.composite
def runs(draw: st.DrawFn) -> DecodeRun:
    n = draw(st.integers(1, 4))
    bs = draw(st.sampled_from([2, 4, 8]))
    k = draw(st.sampled_from([0, 1, 3]))
    pos = [draw(st.integers(0, 30)) for _ in range(n)]
    room = [draw(st.integers(1, 40)) for _ in range(n)]
    two = n > 1 and draw(st.booleans())
    split = draw(st.integers(1, n - 1)) if two else 0
    run = DecodeRun(
        first_step_id=draw(st.integers(0, 5)),
        max_steps=draw(st.integers(1, 20)),
        block_size=bs,
        num_speculative_tokens=k,
        request_ids=[f"r{i}" for i in range(n)],
        removed_request_ids=(),
        truncated_block_tables={},
        num_computed_tokens=pos,
        last_token_ids=[1] * n,
        draft_token_ids=[draw(st.lists(st.integers(0, VOCAB), max_size=k)) for _ in range(n)],
        block_tables=[() for _ in range(n)],
        block_end=[(p // bs + draw(st.integers(1, 2))) * bs for p in pos],  # tight: steps take blocks
        room=room,
        length_limit=[p + 1 + r + draw(st.integers(0, 3)) for p, r in zip(pos, room, strict=True)],
        stop_token_ids=[frozenset(draw(st.sets(st.integers(0, 3), max_size=2))) for _ in range(n)],
        groups=[list(range(split)), list(range(split, n))] if two else [],
        launched=1 if two else 0,
        cross_blocks=draw(st.sampled_from([True, True, False])),
        spare_blocks=draw(st.integers(0, 6)),
    )
    if not two and draw(st.integers(0, 2)):
        return _with_a_chunk_row(draw, run)
    return run


def _with_a_chunk_row(draw: st.DrawFn, run: DecodeRun) -> DecodeRun:
    """``run`` (one group) with a prompt prefilling last, its chunks filling a small budget, crossing blocks."""
    n, bs, k = len(run.request_ids), run.block_size, run.num_speculative_tokens
    at = draw(st.integers(0, 40))
    left = draw(st.integers(1, 12))  # what the decodes leave of the budget when each verifies k drafts
    # The prompt ends exactly where a whole number of full-budget chunks does, or anywhere near.
    exact = draw(st.booleans())
    tokens = at + (left * draw(st.integers(1, 6)) if exact else draw(st.integers(1, 160)))
    return attrs.evolve(
        run,
        request_ids=[*run.request_ids, f"r{n}"],
        num_computed_tokens=[*run.num_computed_tokens, at],
        last_token_ids=[*run.last_token_ids, 0],
        draft_token_ids=[*run.draft_token_ids, []],
        block_tables=[*run.block_tables, ()],
        block_end=[*run.block_end, (at // bs + draw(st.integers(1, 2))) * bs],
        room=[*run.room, 0],
        length_limit=[*run.length_limit, 0],
        stop_token_ids=[*run.stop_token_ids, frozenset()],
        cross_blocks=True,
        spare_blocks=draw(st.integers(0, 12)),
        admission_slack=draw(st.sampled_from([math.inf, 0, 1])),
        chunk_tokens=tokens,
        chunk_budget=n * (1 + k) + left,
        chunk_cap=draw(st.sampled_from([4, 8, 1000, 1000])),  # below the budget: a step leaves budget
    )


@st.composite
def results(draw: st.DrawFn, run: DecodeRun) -> RunResult:
    """A result an executor could return: steps walked through a cursor until it or the draw stops."""
    cursor = RunCursor(run)
    k = run.num_speculative_tokens
    planned = [cursor.plan(j) for j in range(run.depth)]
    assume(all(p is not None for p in planned))
    sampled: list[list[list[int]]] = []
    drafts: list[list[list[int]] | None] = []
    j = 0
    while True:
        verified = cursor.planned[j]
        rows = [draw(st.lists(st.integers(0, VOCAB), min_size=1, max_size=1 + len(d))) for d in verified]
        # Mostly k drafts a row (what the simulator proposes), now and then fewer (a drafter may).
        fewest = draw(st.sampled_from([k, k, k, 0]))
        proposals = (
            [draw(st.lists(st.integers(0, VOCAB), min_size=fewest, max_size=k + 1)) for _ in verified] if k else None
        )
        sampled.append(rows)
        drafts.append(proposals)
        if not cursor.take(j, rows, proposals) or cursor.plan(j + run.depth) is None or not draw(st.integers(0, 15)):
            break
        j += 1
    return RunResult(run.first_step_id, sampled, drafts, [None] * len(sampled))


def rollback_steps(run: DecodeRun, result: RunResult) -> list[int]:
    """The steps of a well-formed ``result`` after which a row holds fewer blocks (a rolled-back block)."""
    cursor = RunCursor(run)
    for j in range(run.depth):
        cursor.plan(j)
    out = []
    for j, (sampled, proposals) in enumerate(zip(result.sampled_token_ids, result.draft_token_ids, strict=True)):
        ends = list(cursor.ends)
        go_on = cursor.take(j, sampled, proposals)
        if any(after < before for after, before in zip(cursor.ends, ends, strict=True)):
            out.append(j)
        if not go_on or cursor.plan(j + run.depth) is None:
            break
    return out


@st.composite
def corrupted(draw: st.DrawFn, run: DecodeRun, result: RunResult) -> RunResult:
    """``result`` as it is, or with one fault an executor might hand back (often in a step that rolled back)."""
    sampled = [[list(row) for row in step] for step in result.sampled_token_ids]
    drafts = [None if d is None else [list(row) for row in d] for d in result.draft_token_ids]
    faults = ["none", "token", "draft", "extra", "empty", "row", "no-row", "step", "drafts-off"]
    fault = draw(st.sampled_from([*faults, "none", "step", "step"]))  # a step past the end: the cursor's plan decides
    rolled = rollback_steps(run, result)
    if rolled and draw(st.booleans()):
        j = draw(st.sampled_from(rolled))
        event("a fault in a step that rolled back a block" if fault != "none" else "a step rolled back a block")
    else:
        j = draw(st.integers(0, len(sampled) - 1))
    step = sampled[j]
    r = draw(st.integers(0, len(step) - 1))
    if fault == "token":
        step[r][draw(st.integers(0, len(step[r]) - 1))] = draw(st.sampled_from(BAD_TOKENS))
    elif fault == "draft" and drafts[j] is not None:
        drafts[j][r].append(draw(st.sampled_from(BAD_TOKENS)))  # type: ignore[index]
    elif fault == "extra":
        step[r].extend(draw(st.lists(st.integers(0, VOCAB), min_size=1, max_size=3)))
    elif fault == "empty":
        step[r] = []
    elif fault == "row":
        step.append([1])
    elif fault == "no-row":
        del step[r]
    elif fault == "step":
        sampled.append([[1] for _ in sampled[-1]])
        drafts.append(drafts[-1])
    elif fault == "drafts-off" and drafts[j] is None:
        drafts[j] = [[1] for _ in step]
    return RunResult(result.first_step_id, sampled, drafts, [None] * len(sampled))


def outcome(replay_fn: Any, run: DecodeRun, result: RunResult) -> Any:
    """The cursor's whole state after the replay, or the error it raised."""
    try:
        c = replay_fn(run, result)
    except Exception as error:  # the same error, whatever it is, is what is compared
        return type(error), str(error)
    return (c.pos, c.ends, c.size, c.room, c.drafts, c.special, c.planned, c.allocated, c.allocs, c.touched, c.chunks)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_lean_replay_accepts_and_refuses_exactly_what_the_cursor_replay_does(data: st.DataObject) -> None:
    run = data.draw(runs())
    result = data.draw(corrupted(run, data.draw(results(run))))
    expected = outcome(reference_replay, run, result)
    if run.chunk_tokens:
        event(f"a chunk row, {'refused' if isinstance(expected[0], type) else 'accepted'}")
    if isinstance(expected[0], type):
        event("refused")
    else:
        event("accepted")
        event(f"accepted, {'allocating' if expected[8] else 'no block taken'}")
        event(f"accepted, {'crossing a filled block' if expected[9] else 'no block filled'}")
        if run.chunk_tokens:
            event(f"accepted, a chunk row, {min(len(expected[10]), 4)}+ chunks")
    assert outcome(replay, run, result) == expected


def test_a_token_out_of_range_is_refused_naming_its_step_and_request() -> None:
    no_stops = [frozenset[int](), frozenset[int]()]
    run = DecodeRun(
        3, 8, 8, 0, ["a", "b"], (), {}, [1, 2], [1, 1], [[], []], [(), ()], [8, 8], [9, 9], [99, 99], no_stops
    )
    good = RunResult(3, [[[1], [2]], [[1], [INT32_MAX]]], [None, None], [None, None])
    assert replay(run, good).pos == [3, 4]
    bad = RunResult(3, [[[1], [2]], [[1], [INT32_MAX + 1]]], [None, None], [None, None])
    refused = (InvalidRequest, f"run from step 3, step 4: request 'b' sampled token {INT32_MAX + 1}")
    assert outcome(replay, run, bad) == outcome(reference_replay, run, bad) == refused


def test_a_step_whose_rows_would_need_a_block_is_past_the_end_of_a_run_that_does_not_cross_blocks() -> None:
    run = DecodeRun(0, 8, 8, 3, ["a"], (), {}, [1], [1], [[1, 2, 3]], [(0,)], [8], [20], [100], [frozenset[int]()])
    one = RunResult(0, [[[1, 2, 3, 4]]], [[[4, 5, 6]]], [None])  # 5 computed: step 1 would verify 5..8
    assert replay(run, one).planned == {0: [[1, 2, 3]]}
    two = RunResult(0, [[[1, 2, 3, 4]], [[1]]], [[[4, 5, 6]], [[4, 5, 6]]], [None, None])
    refused = (InvalidRequest, "run from step 0: step 1 is past the end of the run")
    assert outcome(replay, run, two) == outcome(reference_replay, run, two) == refused


def test_a_chunk_that_would_leave_budget_is_past_the_end_of_the_run() -> None:
    """Step 0's row verifies 3 drafts and the chunk fills the 8 tokens left; the row then proposes none, so step 1
    would leave 11 tokens to a chunk capped at 8: a single step with budget left (it may admit), not the run's."""
    run = DecodeRun(
        0, 8, 4, 3, ["a", "p"], (), {}, [5, 40], [1, 0], [[1, 2, 3], []], [(), ()], [12, 48], [20, 0], [99, 0],
        [frozenset[int](), frozenset[int]()], cross_blocks=True, spare_blocks=10,
        chunk_tokens=200, chunk_budget=12, chunk_cap=8,
    )  # fmt: skip
    one = RunResult(0, [[[5]]], [[[]]], [None])
    cursor = replay(run, one)
    assert (cursor.chunks, cursor.pos) == ({0: 8}, [6, 48])
    assert outcome(replay, run, one) == outcome(reference_replay, run, one)
    two = RunResult(0, [[[5]], [[6]]], [[[]], [[]]], [None, None])
    refused = (InvalidRequest, "run from step 0: step 1 is past the end of the run")
    assert outcome(replay, run, two) == outcome(reference_replay, run, two) == refused
