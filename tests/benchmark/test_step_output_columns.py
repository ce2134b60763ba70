"""Single steps recorded from their columns (``OutputBatch.plain_columns``) against the same steps as RequestOutputs.

``Scheduler.complete`` hands back a single step's outputs as an
:class:`~tokensched.plan.OutputBatch` of columns; the bench's metrics and
answers read a plain one (no event, no finish, no logprobs) from its columns
and any other through its outputs. Random steps (plain rows, finishes,
preemption events, rows with logprobs, count columns as lists or as the
columnar path's arrays, requests the metrics never saw) are recorded twice,
once as batches and once with every batch turned into its list of outputs:
the metrics, the answers and the finished turns must be equal, and an unknown
request must be refused the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.benchmark.test_plain_step_outputs import record
from tokensched.plan import FinishReason, OutputBatch, RequestEvent, RequestOutput

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))


@st.composite
def single_steps(draw: st.DrawFn) -> tuple[list[str], list[tuple[float, Sequence[RequestOutput]]]]:
    """Request ids and single steps of some of them, each an OutputBatch of columns at its time."""
    ids = [f"r{i}" for i in range(draw(st.integers(1, 4)))]
    counts = dict.fromkeys(ids, 0)
    steps: list[tuple[float, Sequence[RequestOutput]]] = []
    now = draw(st.floats(0.0, 2.0))
    for _ in range(draw(st.integers(1, 12))):
        now += draw(st.sampled_from([0.0, 0.01, 0.3, 1.0]))
        rows = draw(st.lists(st.sampled_from(ids), max_size=len(ids), unique=True))
        events = [
            RequestOutput(rid, [], None, None, counts[rid], draw(st.integers(0, 64)), RequestEvent.PREEMPTED)
            for rid in draw(st.lists(st.sampled_from(ids), max_size=1))
        ]
        tokens = [draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)) for _ in rows]
        cached = [draw(st.integers(0, 64)) for _ in rows]
        special: dict[int, RequestOutput] = {}
        for j, rid in enumerate(rows):
            counts[rid] += len(tokens[j])
            kind = draw(st.integers(0, 9))
            if kind == 0:  # a finish, maybe with fewer tokens than the row's
                special[j] = RequestOutput(
                    rid, tokens[j][: draw(st.integers(0, 3))], FinishReason.STOP, None, counts[rid], cached[j]
                )
            elif kind == 1:  # logprobs
                special[j] = RequestOutput(rid, tokens[j], None, [0.0] * len(tokens[j]), counts[rid], cached[j])
        step_counts = [counts[rid] for rid in rows]
        if draw(st.booleans()):  # the columnar path's arrays
            batch = OutputBatch(
                events, rows, tokens, np.array(step_counts, np.int64), np.array(cached, np.int64), special
            )
        else:
            batch = OutputBatch(events, rows, tokens, step_counts, cached, special)
        steps.append((now, batch))
    return ids, steps


@settings(max_examples=max(1, EXAMPLES // 2), deadline=None)
@given(
    steps=single_steps(), known=st.lists(st.integers(0, 9).map(bool), min_size=4, max_size=4), together=st.booleans()
)
def test_single_steps_recorded_from_columns_equal_them_recorded_from_request_outputs(
    steps: tuple[list[str], list[tuple[float, Sequence[RequestOutput]]]], known: list[bool], together: bool
) -> None:
    ids, batches = steps
    as_lists: list[tuple[float, Sequence[RequestOutput]]] = [(t, list(outputs)) for t, outputs in batches]
    assert record(ids, batches, known, together) == record(ids, as_lists, known, together)


def test_plain_columns_are_given_only_when_every_output_is_plain() -> None:
    plain = OutputBatch([], ["a", "b"], [[5], [6, 7]], [3, 9], np.array([16, 32], np.int64), {})
    assert plain.plain_columns() == (["a", "b"], [[5], [6, 7]], [16, 32])
    assert plain == [RequestOutput("a", [5], None, None, 3, 16), RequestOutput("b", [6, 7], None, None, 9, 32)]
    finish = RequestOutput("b", [6], FinishReason.STOP, None, 8, 32)
    with_finish = OutputBatch([], ["a", "b"], [[5], [6, 7]], [3, 9], [16, 32], {1: finish})
    assert with_finish.plain_columns() is None
    assert list(with_finish) == [RequestOutput("a", [5], None, None, 3, 16), finish]
    event = RequestOutput("c", [], None, None, 2, 0, RequestEvent.PREEMPTED)
    assert OutputBatch([event], ["a"], [[5]], [3], [16], {}).plain_columns() is None
    built: Any = OutputBatch.of([RequestOutput("a", [5], None, None, 3, 16)])
    assert built.plain_columns() is None  # outputs built one by one are read as outputs
