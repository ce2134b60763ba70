"""Checks a StepResult against the step it answers, before anything is applied.

A malformed result is refused whole with :class:`InvalidRequest`, so a buggy
executor can never half-apply a step.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import chain

from tokensched.errors import InvalidRequest
from tokensched.machines.step import Step
from tokensched.plan import StepResult
from tokensched.tokens import INT32_MAX


def validate_result(step: Step, result: StepResult, max_drafts: int) -> None:
    n = len(step.requests)
    sampled_rows = result.sampled_token_ids
    drafts = result.draft_token_ids
    if len(sampled_rows) != n:
        raise InvalidRequest(f"{_where(step)}: {len(sampled_rows)} rows of sampled tokens for {n} scheduled requests")
    if drafts is not None and len(drafts) != n:
        raise InvalidRequest(f"{_where(step)}: {len(drafts)} rows of drafts for {n} scheduled requests")
    if result.logprobs is not None and len(result.logprobs) != n:
        raise InvalidRequest(f"{_where(step)}: {len(result.logprobs)} rows of logprobs for {n} scheduled requests")
    # The usual result passes in a few C-level passes over its sampled tokens and drafts together; anything
    # they refuse is walked row by row below, sampled tokens first, which names the first fault in row order.
    tokens = chain.from_iterable(sampled_rows)
    if drafts is not None:
        tokens = chain(tokens, chain.from_iterable(drafts))
    if _counts_ok(step, sampled_rows) and _plain_tokens(tokens) and (max_drafts or drafts is None or not any(drafts)):
        return
    where = _where(step)
    _check_rows(step, sampled_rows, where)
    if drafts is not None:
        for row in drafts:
            if row and max_drafts == 0:
                raise InvalidRequest(f"{where}: drafts proposed but num_speculative_tokens is 0")
            for token in row:
                if type(token) is not int or token < 0 or token > INT32_MAX:
                    raise InvalidRequest(f"{where}: draft token {token!r}")


def _where(step: Step) -> str:
    return f"result for step {step.step_id}"


def _counts_ok(step: Step, sampled_rows: Sequence[Sequence[int]]) -> bool:
    """Whether every sampling row has 1 to 1 + drafts tokens and every other row none."""
    for count, sample, nd in zip(map(len, sampled_rows), step.samples, step.num_drafts, strict=True):
        if (count < 1 or count > 1 + nd) if sample else count:
            return False
    return True


def _plain_tokens(tokens: Iterable[object]) -> bool:
    """Whether every token is a plain int in ``0 .. INT32_MAX`` (an empty iterable passes)."""
    flat = list(tokens)
    return not flat or ({*map(type, flat)} <= {int} and min(flat) >= 0 and max(flat) <= INT32_MAX)  # type: ignore[type-var,operator]


def _check_rows(step: Step, sampled_rows: Sequence[Sequence[int]], where: str) -> None:
    """Raise InvalidRequest for the first faulty row of sampled tokens, in row order."""
    samples = step.samples
    num_drafts = step.num_drafts
    for i in range(len(sampled_rows)):
        sampled = sampled_rows[i]
        count = len(sampled)
        if samples[i]:
            if count < 1 or count > 1 + num_drafts[i]:
                raise InvalidRequest(
                    f"{where}: request {step.requests[i].request_id!r} sampled {count} tokens; "
                    f"expected 1 to {1 + num_drafts[i]}"
                )
        elif count:
            raise InvalidRequest(
                f"{where}: request {step.requests[i].request_id!r} sampled {count} tokens in a non-final prefill chunk"
            )
        for token in sampled:
            if type(token) is not int or token < 0 or token > INT32_MAX:
                raise InvalidRequest(f"{where}: request {step.requests[i].request_id!r} sampled token {token!r}")
