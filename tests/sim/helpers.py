"""Hand-built StepPlans and a minimal host loop, to drive the SimExecutor without the Scheduler."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from tokensched.config import SamplingParams
from tokensched.plan import NO_DRAFTS, NewRequestData, StepPlan, StepResult
from tokensched_sim import SimExecutor


@attrs.frozen
class Entry:
    """One scheduled request: ``num_tokens`` new tokens after ``computed`` cached ones."""

    request_id: str
    computed: int
    num_tokens: int
    sample: bool = True
    drafts: tuple[int, ...] = NO_DRAFTS


def new_request(request_id: str, prompt_len: int, *, logprobs: bool = False, outputs: int = 0) -> NewRequestData:
    return NewRequestData(
        request_id=request_id,
        token_ids=[7] * (prompt_len + outputs),
        block_ids=(),
        num_cached_tokens=0,
        num_output_tokens=outputs,
        sampling=SamplingParams(logprobs=logprobs),
    )


def make_plan(
    step_id: int,
    entries: Sequence[Entry],
    new: Sequence[NewRequestData] = (),
    removed: Sequence[str] = (),
    block_size: int = 16,
) -> StepPlan:
    offsets = [0]
    tokens: list[int] = []
    slots: list[int] = []
    for e in entries:
        plain = e.num_tokens - len(e.drafts)
        tokens += [7] * plain + list(e.drafts)
        slots += list(range(e.computed, e.computed + e.num_tokens))
        offsets.append(len(tokens))
    return StepPlan(
        step_id=step_id,
        block_size=block_size,
        new_requests=tuple(new),
        removed_request_ids=tuple(removed),
        request_ids=[e.request_id for e in entries],
        num_computed_tokens=[e.computed for e in entries],
        token_offsets=offsets,
        token_ids=tokens,
        slot_mapping=slots,
        new_block_ids=[() for _ in entries],
        sample=[e.sample for e in entries],
        draft_token_ids=[e.drafts for e in entries],
    )


@attrs.define
class _Running:
    prompt_len: int
    outputs: list[int] = attrs.field(factory=list)
    drafts: tuple[int, ...] = NO_DRAFTS
    started: bool = False


def drive(
    executor: SimExecutor, prompts: dict[str, int], *, max_tokens: int = 64, in_flight: int = 1
) -> tuple[dict[str, list[int]], list[StepResult]]:
    """Whole-prompt prefill, then decodes (with the executor's drafts) until EOS or ``max_tokens``.

    With ``in_flight=2`` steps overlap; a request is then scheduled only when it
    has no step in flight (enough to exercise the executor's clock).
    """
    running = {rid: _Running(n) for rid, n in prompts.items()}
    done: dict[str, list[int]] = {}
    results: list[StepResult] = []
    pending: list[tuple[StepPlan, set[str]]] = []
    busy: set[str] = set()
    removed: list[str] = []
    step_id = 0
    while running or pending:
        while len(pending) < in_flight:
            entries, new = [], []
            for rid, r in running.items():
                if rid in busy:
                    continue
                if not r.started:
                    new.append(new_request(rid, r.prompt_len))
                    entries.append(Entry(rid, 0, r.prompt_len))
                    r.started = True
                else:
                    computed = r.prompt_len + len(r.outputs) - 1
                    entries.append(Entry(rid, computed, 1 + len(r.drafts), drafts=r.drafts))
            if not entries:
                break
            plan = make_plan(step_id, entries, new, removed)
            removed = []
            step_id += 1
            executor.launch(plan)
            ids = {e.request_id for e in entries}
            busy |= ids
            pending.append((plan, ids))
        plan, ids = pending.pop(0)
        busy -= ids
        result = executor.collect()
        assert result.step_id == plan.step_id
        results.append(result)
        for i, rid in enumerate(plan.request_ids):
            r = running[rid]
            r.outputs += result.sampled_token_ids[i]
            r.drafts = tuple(result.draft_token_ids[i]) if result.draft_token_ids else NO_DRAFTS
            if executor.eos_token_id in r.outputs or len(r.outputs) >= max_tokens:
                done[rid] = r.outputs
                del running[rid]
                removed.append(rid)
    return done, results
