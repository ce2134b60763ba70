"""A step's result applied row by row, the common decode row in a few attribute updates.

Why: in a mixed single step (a prefill chunk beside speculative decodes, or
decodes while requests wait or a step is in flight) the columnar path of
:mod:`tokensched.columnar_steps` does not apply, and every row went through
:meth:`Scheduler._apply_row <tokensched.scheduler.Scheduler._apply_row>` and
``_append_tokens``: two calls and some fifty branches a row, most of them
answering "nothing rare happened". The simulator's DP-attention hours apply
~190k such rows. :func:`apply_rows` hoists what is fixed for the step out of
the loop and, for a row that only moves counters (a decoding request that
samples, hits no stop id, stays below its length limit, rolls back no block
and fills no block that would be hashed or committed), does exactly what
``_apply_row`` does for it; every other row goes through ``_apply_row``
itself, in plan order. Nothing is batched across rows, so the order of every
effect is the reference's. The step's outputs come back as the columns of an
:class:`~tokensched.plan.OutputBatch` (a plain row's output built only when
read; the bench reads the columns), not as one ``RequestOutput`` a row.

The per-request path alone (``Scheduler(fast_decode=False)``) never uses
this; ``tests/property/test_fast_path.py`` drives both with the same traffic
(speculative decoding, stop and eos ids, length limits, rollbacks, caching,
two steps in flight) and asserts identical outputs, requests and pools.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tokensched.machines.request import Decoding, Request
from tokensched.machines.step import Step
from tokensched.plan import OutputBatch, RequestOutput, StepResult

if TYPE_CHECKING:
    from tokensched.scheduler import Scheduler


def apply_rows(
    sched: Scheduler, step: Step, result: StepResult, now: float, events: list[RequestOutput], fills: list[Request]
) -> OutputBatch:
    """Apply every row of ``result`` still current (its request's epoch unchanged), in plan order.

    Returns the step's outputs: ``events``, then one per sampling row, as
    columns; an output that is not plain (a finish, logprobs) is kept whole
    beside them (see :class:`~tokensched.plan.OutputBatch`).
    """
    bs = sched._bs
    caching = sched._caching
    k_spec = sched._k_spec
    max_len = sched.config.max_model_len
    apply_row = sched._apply_row
    rows = result.sampled_token_ids
    drafts_in = result.draft_token_ids
    logprobs_in = result.logprobs
    samples, num_drafts, num_tokens, epochs = step.samples, step.num_drafts, step.num_tokens, step.epochs
    ids: list[str] = []
    new_tokens: list[list[int]] = []
    counts: list[int] = []
    cached: list[int] = []
    special: dict[int, RequestOutput] = {}
    told: list[RequestOutput] = []  # the output _apply_row makes for a row (none for a non-final prefill chunk)
    for i, request in enumerate(step.requests):
        if request.epoch != epochs[i]:
            continue  # left the running set (finished, aborted, preempted) after this step was planned
        state = request.state
        if type(state) is not Decoding or not samples[i]:
            apply_row(i, request, step, result, now, told, fills)
            if told:
                _add(told.pop(), ids, new_tokens, counts, cached, special)
            continue
        sampled = rows[i]
        m = len(sampled)
        nd = num_drafts[i]
        tokens = request.tokens
        size = tokens.size + m  # the history's length once ``sampled`` is appended
        computed = state.num_computed + num_tokens[i] - nd + m - 1  # accepted drafts and the bonus's input
        limit = request.num_prompt_tokens + request.max_tokens
        eos = request.eos_token_id
        stop = request.stop_token_ids
        if (
            size >= (limit if limit < max_len else max_len)  # the length limit is reached in this row
            or len(state.blocks) > (computed + bs - 1) // bs  # blocks that held only rejected drafts go back
            or (eos is not None and eos in sampled)
            or (stop and not stop.isdisjoint(sampled))
            or (
                caching
                and (
                    size >= (len(request.block_hashes) + 1) * bs  # a block's tokens are all known: hash it
                    or (computed if computed < size else size) // bs > state.num_committed  # a block to commit
                )
            )
        ):
            apply_row(i, request, step, result, now, told, fills)
            _add(told.pop(), ids, new_tokens, counts, cached, special)
            continue
        request.inflight_steps -= 1
        state.num_computed = computed
        if nd:
            state.num_scheduled = computed
        request.inflight_samples -= 1 + nd
        if m == 1:
            tokens.append(sampled[0])
        else:
            tokens.extend(sampled)
        request.last_token = sampled[-1]
        if drafts_in is not None:
            request.draft_tokens = drafts_in[i][:k_spec]
        if logprobs_in is not None and request.sampling.logprobs:
            special[len(ids)] = RequestOutput(
                request.request_id,
                sampled,
                None,
                logprobs_in[i],
                size - request.num_prompt_tokens,
                request.num_cached_tokens,
            )
        ids.append(request.request_id)
        new_tokens.append(sampled)
        counts.append(size - request.num_prompt_tokens)
        cached.append(request.num_cached_tokens)
    return OutputBatch(events, ids, new_tokens, counts, cached, special)


def _add(
    output: RequestOutput,
    ids: list[str],
    new_tokens: list[list[int]],
    counts: list[int],
    cached: list[int],
    special: dict[int, RequestOutput],
) -> None:
    """Add an output ``_apply_row`` made to the columns; one that is not plain is also kept whole."""
    if output.finish_reason is not None or output.logprobs is not None or output.event is not None:
        special[len(ids)] = output
    ids.append(output.request_id)
    new_tokens.append(output.new_token_ids)
    counts.append(output.num_output_tokens)
    cached.append(output.num_cached_tokens)
