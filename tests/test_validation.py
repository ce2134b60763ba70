"""validate_result's C-level passes accept and refuse exactly what a walk of every row and token does.

The reference below is the row-by-row check the scheduler used before the
passes: it names the first fault in row order. Random results mix good rows
with wrong counts, tokens out of range, bools, floats and drafts where none
may be; both must refuse with the same message, or both accept.
"""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from tokensched.errors import InvalidRequest
from tokensched.machines.step import Step
from tokensched.plan import StepResult
from tokensched.tokens import INT32_MAX
from tokensched.validation import validate_result

EXAMPLES = int(os.environ.get("TOKENSCHED_STATEFUL_EXAMPLES", "500"))


def reference(step: Step, result: StepResult, max_drafts: int) -> None:
    n = len(step.requests)
    where = f"result for step {step.step_id}"
    rows = result.sampled_token_ids
    if len(rows) != n:
        raise InvalidRequest(f"{where}: {len(rows)} rows of sampled tokens for {n} scheduled requests")
    if result.draft_token_ids is not None and len(result.draft_token_ids) != n:
        raise InvalidRequest(f"{where}: {len(result.draft_token_ids)} rows of drafts for {n} scheduled requests")
    for i in range(n):
        count = len(rows[i])
        rid = step.requests[i].request_id
        if step.samples[i]:
            if count < 1 or count > 1 + step.num_drafts[i]:
                raise InvalidRequest(
                    f"{where}: request {rid!r} sampled {count} tokens; expected 1 to {1 + step.num_drafts[i]}"
                )
        elif count:
            raise InvalidRequest(f"{where}: request {rid!r} sampled {count} tokens in a non-final prefill chunk")
        for token in rows[i]:
            if type(token) is not int or token < 0 or token > INT32_MAX:
                raise InvalidRequest(f"{where}: request {rid!r} sampled token {token!r}")
    if result.draft_token_ids is not None:
        for row in result.draft_token_ids:
            if len(row) > max_drafts and max_drafts == 0:
                raise InvalidRequest(f"{where}: drafts proposed but num_speculative_tokens is 0")
            for token in row:
                if type(token) is not int or token < 0 or token > INT32_MAX:
                    raise InvalidRequest(f"{where}: draft token {token!r}")


def outcome(check: Any, step: Step, result: StepResult, max_drafts: int) -> str | None:
    try:
        check(step, result, max_drafts)
    except InvalidRequest as error:
        return str(error)
    return None


# Mostly good tokens, now and then one of each kind of bad one.
TOKENS = st.one_of(
    st.integers(0, 50),
    st.integers(0, 50),
    st.integers(0, 50),
    st.sampled_from([-1, INT32_MAX, INT32_MAX + 1, True, 2.0]),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(data=st.data(), max_drafts=st.sampled_from([0, 3]), with_drafts=st.booleans())
def test_the_passes_refuse_exactly_what_the_row_walk_refuses(
    data: st.DataObject, max_drafts: int, with_drafts: bool
) -> None:
    n = data.draw(st.integers(1, 6))
    samples = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    num_drafts = [data.draw(st.integers(0, max_drafts)) if s else 0 for s in samples]
    requests = [SimpleNamespace(request_id=f"r{i}") for i in range(n)]
    step = Step(7, requests, [0] * n, [1 + d for d in num_drafts], num_drafts, samples)  # type: ignore[arg-type]
    rows = []
    for sample, nd in zip(samples, num_drafts, strict=True):
        count = data.draw(st.integers(1, 1 + nd)) if sample else 0
        count = data.draw(st.sampled_from([count] * 6 + [count + 1, max(count - 1, 0)]))  # a wrong count now and then
        rows.append(data.draw(st.lists(TOKENS, min_size=count, max_size=count)))
    drafts = data.draw(st.lists(st.lists(TOKENS, max_size=3), min_size=n, max_size=n)) if with_drafts else None
    result = StepResult(7, rows, drafts)
    want = outcome(reference, step, result, max_drafts)
    event("refused" if want is not None else "accepted")
    assert outcome(validate_result, step, result, max_drafts) == want


def test_a_result_with_too_few_rows_is_refused_before_any_row() -> None:
    step = Step(1, [SimpleNamespace(request_id="a")], [0], [1], [0], [True])  # type: ignore[list-item]
    with pytest.raises(InvalidRequest, match="0 rows of sampled tokens for 1 scheduled requests"):
        validate_result(step, StepResult(1, []), 0)
