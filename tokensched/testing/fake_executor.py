"""A deterministic stand-in executor: random tokens, accept lengths and failures from one seed.

It checks what a real executor would trip over (every placeholder resolvable,
every slot inside the request's block table, block tables rebuilt from deltas
equal to the scheduler's) and records every position it computed, so property
tests can prove each position is computed exactly once per residency.
"""

from __future__ import annotations

import random
from collections import deque

from tokensched.errors import ExecutorError
from tokensched.executor import RequestMirror, VirtualClock
from tokensched.plan import StepPlan, StepResult


class FakeExecutor(VirtualClock):
    """Runs plans instantly on a virtual clock of ``step_time`` seconds per step.

    ``eos_prob``: chance a sampled token is ``eos_token_id``; ``accept_prob``:
    chance each draft is accepted; ``fail_prob``: chance a step fails.
    """

    def __init__(
        self,
        num_kv_blocks: int,
        block_size: int = 16,
        seed: int = 0,
        vocab_size: int = 1000,
        eos_token_id: int | None = None,
        eos_prob: float = 0.0,
        num_drafts: int = 0,
        accept_prob: float = 0.7,
        fail_prob: float = 0.0,
        step_time: float = 0.01,
    ) -> None:
        self._block_size = block_size
        self._num_kv_blocks = num_kv_blocks
        self.rng = random.Random(seed)
        self.vocab_size = vocab_size
        self.eos_token_id = eos_token_id
        self.eos_prob = eos_prob
        self.num_drafts = num_drafts
        self.accept_prob = accept_prob
        self.fail_prob = fail_prob
        self.step_time = step_time
        self.mirror = RequestMirror()
        self._queue: deque[tuple[StepPlan, StepResult | ExecutorError]] = deque()
        self.computed: list[tuple[int, str, int]] = []  # (step id, request id, position) per computed token
        self.slot_owner: dict[int, tuple[str, int]] = {}  # KV slot -> (request, position) last written
        self.launched: list[int] = []

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_kv_blocks(self) -> int:
        return self._num_kv_blocks

    def launch(self, plan: StepPlan) -> None:
        self.launched.append(plan.step_id)
        self.mirror.begin(plan)
        if self.fail_prob and self.rng.random() < self.fail_prob:
            self._queue.append((plan, ExecutorError(plan.step_id, "injected failure")))
            return
        bs = plan.block_size
        sampled_rows: list[list[int]] = []
        draft_rows: list[list[int]] = []
        for i, request_id in enumerate(plan.request_ids):
            table = self.mirror.block_table(request_id)
            lo, hi = plan.token_offsets[i], plan.token_offsets[i + 1]
            start = plan.num_computed_tokens[i]
            for j in range(hi - lo):
                pos = start + j
                slot = plan.slot_mapping[lo + j]
                if pos // bs >= len(table) or table[pos // bs] * bs + pos % bs != slot:
                    raise AssertionError(f"step {plan.step_id}: {request_id} position {pos} has slot {slot}")
                self.computed.append((plan.step_id, request_id, pos))
                self.slot_owner[slot] = (request_id, pos)
            drafts = plan.draft_token_ids[i]
            if not plan.sample[i]:
                sampled_rows.append([])
            else:
                accepted = 0
                while accepted < len(drafts) and self.rng.random() < self.accept_prob:
                    accepted += 1
                sampled_rows.append([*drafts[:accepted], self._token()])
            draft_rows.append([self._token() for _ in range(self.num_drafts)])
        result = StepResult(
            step_id=plan.step_id,
            sampled_token_ids=sampled_rows,
            draft_token_ids=draft_rows if self.num_drafts else None,
            elapsed=self.step_time,
        )
        self.mirror.finish(plan, result)
        self._queue.append((plan, result))

    def _token(self) -> int:
        if self.eos_token_id is not None and self.rng.random() < self.eos_prob:
            return self.eos_token_id
        token = self.rng.randrange(self.vocab_size)
        return token + 1 if token == self.eos_token_id else token

    def collect(self) -> StepResult:
        _, outcome = self._queue.popleft()
        self._clock += self.step_time
        if isinstance(outcome, ExecutorError):
            raise outcome
        return outcome
