"""A run's steps recorded from their columns (``PlainStepOutputs``) against the same steps as RequestOutputs.

Random runs (one or two groups of rows, one to three tokens a row, steps
with finishes or events between them, requests the metrics never saw) are
recorded twice, once as the scheduler hands them back and once with every
step turned into its list of :class:`RequestOutput`: the metrics (requests,
inter-token latencies, window tokens, summary), the answers and the
workload's finished turns must be equal, and an unknown request must be
refused the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.benchmark.metrics import MetricsCollector
from tokensched.benchmark.run import record_steps
from tokensched.errors import UnknownRequest
from tokensched.plan import FinishReason, RequestOutput
from tokensched.run_outputs import PlainStepOutputs

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))


class Turns:
    """The part of a workload ``record_steps`` calls: the turns that finished."""

    def __init__(self) -> None:
        self.finished: list[tuple[str, list[int], float, FinishReason]] = []

    def on_finished(self, request_id: str, answer: Sequence[int], t: float, reason: FinishReason) -> None:
        self.finished.append((request_id, list(answer), t, reason))


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[str], list[tuple[float, Sequence[RequestOutput]]]]:
    """Request ids and the steps of one run, or of two in a row (the second over the same requests in another
    order): plain steps as columns, the others as lists, each at its time."""
    n = draw(st.integers(1, 4))
    ids = [f"r{i}" for i in range(n)]
    steps: list[tuple[float, Sequence[RequestOutput]]] = []
    counts = [draw(st.integers(0, 5)) for _ in range(n)]
    now = draw(st.floats(0.0, 2.0))
    for run_ids in [ids, draw(st.permutations(ids))][: draw(st.integers(1, 2))]:
        split = draw(st.integers(1, n - 1)) if n > 1 and draw(st.booleans()) else 0
        groups = [list(range(split)), list(range(split, n))] if split else [list(range(n))]
        cached = [draw(st.integers(0, 64)) for _ in range(n)]
        for j in range(draw(st.integers(1, 12))):
            now += draw(st.sampled_from([0.0, 0.01, 0.3, 1.0]))
            rows = groups[j % len(groups)]
            tokens = [draw(st.lists(st.integers(0, 9), min_size=1, max_size=3)) for _ in rows]
            step_counts = []
            for i, row in zip(rows, tokens, strict=True):
                counts[i] += len(row)
                step_counts.append(counts[i])
            if draw(st.integers(0, 4)):
                steps.append((now, PlainStepOutputs(run_ids, rows, tokens, step_counts, cached)))
            else:  # a step the per-request code applied: maybe a finish, a grown cache, an empty row
                outs = []
                for i, row, count in zip(rows, tokens, step_counts, strict=True):
                    reason = draw(st.sampled_from([None, None, FinishReason.STOP, FinishReason.LENGTH]))
                    row_out = draw(st.sampled_from([row, []]))
                    outs.append(RequestOutput(run_ids[i], row_out, reason, None, count, cached[i] + 1))
                steps.append((now, outs))
    return ids, steps


def record(
    ids: list[str], steps: list[tuple[float, Sequence[RequestOutput]]], known: list[bool], together: bool
) -> tuple[Any, ...]:
    """Record ``steps`` (all in one call, or a step a call) into fresh metrics; returns what was recorded."""
    metrics = MetricsCollector(window_start=1.0, window_end=3.0)
    for i, request_id in enumerate(ids):
        if known[i]:
            metrics.on_arrival(request_id, 100, 0.5 * i)
    answers: dict[str, list[int]] = {request_id: [] for request_id in ids}
    turns = Turns()
    error = None
    try:
        if together:
            record_steps(steps, metrics, turns, answers)  # type: ignore[arg-type]
        else:
            for step in steps:
                record_steps((step,), metrics, turns, answers)  # type: ignore[arg-type]
    except (UnknownRequest, KeyError) as exc:
        error = (type(exc), str(exc))
    summary = metrics.summarize(10.0).model_dump_json()
    return (
        error,
        dict(metrics._requests),
        list(metrics._itl),
        metrics._window_output_tokens,
        summary,
        answers,
        turns.finished,
    )


@settings(max_examples=EXAMPLES, deadline=None)
@given(run=runs(), known=st.lists(st.integers(0, 9).map(bool), min_size=4, max_size=4), together=st.booleans())
def test_a_run_recorded_from_columns_equals_it_recorded_from_request_outputs(
    run: tuple[list[str], list[tuple[float, Sequence[RequestOutput]]]], known: list[bool], together: bool
) -> None:
    ids, steps = run
    as_lists: list[tuple[float, Sequence[RequestOutput]]] = [(t, list(outputs)) for t, outputs in steps]
    assert record(ids, steps, known, together) == record(ids, as_lists, known, together)


def test_a_plain_step_reads_as_the_request_outputs_of_its_rows() -> None:
    ids = ["a", "b", "c"]
    step = PlainStepOutputs(ids, [2, 0], [[5], [6, 7]], [3, 9], [16, 0, 32])
    expected = [RequestOutput("c", [5], None, None, 3, 32), RequestOutput("a", [6, 7], None, None, 9, 16)]
    assert len(step) == 2
    assert step == expected and list(step) == expected and step[1] == expected[1] and step[:1] == expected[:1]
    assert step.columns() == (ids, [2, 0], [[5], [6, 7]], [3, 9], [16, 0, 32])
    with pytest.raises(TypeError):
        hash(step)
