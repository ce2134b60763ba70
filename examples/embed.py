"""Embedding tokensched in another engine's loop: submit, plan, run, complete.

The host engine keeps its own model runner; tokensched decides what runs. Here
the "model" is a toy that answers the next integer, and the host keeps two
steps in flight: it plans step k+1 before collecting step k, so a decode's
input in step k+1 is PLACEHOLDER_TOKEN, which the runner fills with the token
it sampled in step k.

The loop reads what happened through the public API only: outputs carry new
tokens, finishes and events (a request preempted or rolled back says so);
``last_plan_outcome`` says why ``plan()`` returned None; ``stats()`` balances
the pool; ``running_requests()`` / ``waiting_requests()`` are read-only views.

    python examples/embed.py
"""

from __future__ import annotations

from collections import deque

from tokensched import (
    PLACEHOLDER_TOKEN,
    FinishReason,
    PlanOutcome,
    RequestSpec,
    Scheduler,
    SchedulerConfig,
    StepPlan,
    StepResult,
)


class ToyRunner:
    """Stands in for the host's model runner: samples (last input token + 1) mod 100."""

    def __init__(self) -> None:
        self.last_sampled: dict[str, int] = {}

    def run(self, plan: StepPlan) -> StepResult:
        sampled: list[list[int]] = []
        for i, request_id in enumerate(plan.request_ids):
            tokens = plan.token_ids[plan.token_offsets[i] : plan.token_offsets[i + 1]]
            if tokens[0] == PLACEHOLDER_TOKEN:  # planned before the previous step's token was known
                tokens = [self.last_sampled[request_id], *tokens[1:]]
            # A real runner writes KV at plan.slot_mapping and attends through the block table here.
            if plan.sample[i]:
                token = (tokens[-1] + 1) % 100
                self.last_sampled[request_id] = token
                sampled.append([token])
            else:
                sampled.append([])
        return StepResult(plan.step_id, sampled)


def main() -> dict[str, list[int]]:
    # 10 blocks for 4 requests that grow to 37 tokens (3 blocks) each: they run short, and some are preempted.
    scheduler = Scheduler(SchedulerConfig(num_blocks=10, block_size=16, max_batched_tokens=64, max_steps_in_flight=2))
    runner = ToyRunner()
    for i in range(4):
        prompt = list(range(10 * i + 1, 10 * i + 30))
        scheduler.submit(RequestSpec(request_id=f"req-{i}", prompt_token_ids=prompt, max_tokens=8, eos_token_id=0))
    in_flight: deque[StepResult] = deque()
    answers: dict[str, list[int]] = {}
    while scheduler.has_work:
        while (plan := scheduler.plan()) is not None:  # plan ahead while earlier steps "run"
            in_flight.append(runner.run(plan))
        # WINDOW_FULL: max_steps_in_flight reached; BLOCKED: nothing fits until a step completes.
        assert scheduler.last_plan_outcome in (PlanOutcome.WINDOW_FULL, PlanOutcome.BLOCKED)
        for output in scheduler.complete(in_flight.popleft()):
            if output.event is not None:  # preempted: it recomputes later, its tokens so far stand
                print(f"{output.request_id}: {output.event.value} after {output.num_output_tokens} tokens")
                running = [(v.request_id, v.num_output_tokens) for v in scheduler.running_requests()]
                waiting = [v.request_id for v in scheduler.waiting_requests()]
                print(f"  running (id, tokens): {running}; waiting: {waiting}")
                continue
            answers.setdefault(output.request_id, []).extend(output.new_token_ids)
            if output.finish_reason is not None:
                reason = output.finish_reason.value
                print(f"{output.request_id}: {answers[output.request_id]} ({reason})")
                assert output.finish_reason in (FinishReason.STOP, FinishReason.LENGTH)
        scheduler.check_invariants()
    stats = scheduler.stats()
    empty, evictable, held, pending = stats.pool_balance
    print(f"pool: {empty} empty + {evictable} evictable + {held} held + {pending} pending = {stats.num_total_blocks}")
    print(f"{stats.num_preemptions} preemptions, {stats.num_finished} finished, outcome {scheduler.last_plan_outcome}")
    return answers


if __name__ == "__main__":
    main()
