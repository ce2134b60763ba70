"""Checks a StepResult against the step it answers, before anything is applied.

A malformed result is refused whole with :class:`InvalidRequest`, so a buggy
executor can never half-apply a step.
"""

from __future__ import annotations

from tokensched.errors import InvalidRequest
from tokensched.machines.step import Step
from tokensched.plan import StepResult
from tokensched.tokens import INT32_MAX


def validate_result(step: Step, result: StepResult, max_drafts: int) -> None:
    n = len(step.requests)
    sampled_rows = result.sampled_token_ids
    where = f"result for step {step.step_id}"
    if len(sampled_rows) != n:
        raise InvalidRequest(f"{where}: {len(sampled_rows)} rows of sampled tokens for {n} scheduled requests")
    if result.draft_token_ids is not None and len(result.draft_token_ids) != n:
        raise InvalidRequest(f"{where}: {len(result.draft_token_ids)} rows of drafts for {n} scheduled requests")
    if result.logprobs is not None and len(result.logprobs) != n:
        raise InvalidRequest(f"{where}: {len(result.logprobs)} rows of logprobs for {n} scheduled requests")
    samples = step.samples
    num_drafts = step.num_drafts
    for i in range(n):
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
    if result.draft_token_ids is not None:
        for row in result.draft_token_ids:
            if len(row) > max_drafts and max_drafts == 0:
                raise InvalidRequest(f"{where}: drafts proposed but num_speculative_tokens is 0")
            for token in row:
                if type(token) is not int or token < 0 or token > INT32_MAX:
                    raise InvalidRequest(f"{where}: draft token {token!r}")
