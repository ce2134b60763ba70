"""A hypothesis state machine drives the real Scheduler with the torch executor on a tiny model.

``TorchSchedulerMachine``: rules submit requests (sharing prefixes, so the prefix cache hits), abort them
and run steps with up to two in flight over a pool small enough to force
preemption. Whatever the interleaving, the scheduler's invariants hold after
every rule, and every request's tokens are a prefix of plain greedy decoding
with the dense reference forward (all of them, once it has finished).
``TorchExecutorSchedulerMachine`` runs the scheduler's own machine from
:mod:`tokensched.testing` with this executor.
"""

from __future__ import annotations

import random
from collections import deque

import pytest

torch = pytest.importorskip("torch")

from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule  # noqa: E402

from tokensched import CapacityError, Executor, FinishReason, RequestSpec, Scheduler, SchedulerConfig  # noqa: E402
from tokensched.testing import SchedulerStateMachine  # noqa: E402
from tokensched_torch import MLAConfig, MLAModel, TorchExecutor, greedy_reference  # noqa: E402

MODEL = MLAModel(MLAConfig()).double()
_rng = random.Random(0)
PREFIXES = [[_rng.randrange(256) for _ in range(n)] for n in (0, 5, 9)]
_greedy: dict[tuple[int, ...], list[int]] = {}


def greedy(prompt: list[int], n: int) -> list[int]:
    """The first ``n`` greedy tokens after ``prompt`` (memoised: the dense reference is quadratic)."""
    key = tuple(prompt)
    known = _greedy.get(key, [])
    if len(known) < n:
        known = _greedy[key] = greedy_reference(MODEL, prompt, max(n, 8))
    return known[:n]


class TorchSchedulerMachine(RuleBasedStateMachine):
    num_speculative_tokens = 0
    enable_prefix_caching = True
    num_blocks = 8  # a 16-token prompt plus 8 outputs needs 6: preemption is routine

    def __init__(self) -> None:
        super().__init__()
        k = self.num_speculative_tokens
        self.executor = TorchExecutor(
            model=MODEL, num_blocks=self.num_blocks, block_size=4, dtype=torch.float64, num_speculative_tokens=k
        )
        config = SchedulerConfig(
            num_blocks=self.num_blocks,
            block_size=4,
            max_batched_tokens=12,
            max_steps_in_flight=2,
            num_speculative_tokens=k,
            enable_prefix_caching=self.enable_prefix_caching,
        )
        self.scheduler = Scheduler(config, clock=self.executor.now)
        self.launched: deque[int] = deque()
        self.specs: dict[str, RequestSpec] = {}
        self.tokens: dict[str, list[int]] = {}
        self.finished: dict[str, FinishReason] = {}
        self.count = 0

    @rule(
        prefix=st.sampled_from(PREFIXES),
        tail=st.lists(st.integers(0, 255), min_size=1, max_size=7),
        max_tokens=st.integers(1, 8),
        eos_at=st.none() | st.integers(0, 7),
    )
    def submit(self, prefix: list[int], tail: list[int], max_tokens: int, eos_at: int | None) -> None:
        self.count += 1
        prompt = [*prefix, *tail]
        # An eos the model really emits (greedy token number eos_at), so requests also stop early.
        eos = None if eos_at is None else greedy(prompt, 8)[eos_at]
        spec = RequestSpec(
            request_id=f"r{self.count}", prompt_token_ids=prompt, max_tokens=max_tokens, eos_token_id=eos
        )
        try:
            self.scheduler.submit(spec)
        except CapacityError:
            return
        self.specs[spec.request_id] = spec
        self.tokens[spec.request_id] = []

    @precondition(lambda self: any(r not in self.finished for r in self.specs))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        live = sorted(r for r in self.specs if r not in self.finished)
        request_id = data.draw(st.sampled_from(live))
        out = self.scheduler.abort(request_id)
        assert out.finish_reason is FinishReason.ABORT
        self.finished[request_id] = FinishReason.ABORT

    @precondition(lambda self: self.scheduler.has_work)
    @rule()
    def step(self) -> None:
        while (plan := self.scheduler.plan()) is not None:
            self.executor.launch(plan)
            self.launched.append(plan.step_id)
        if not self.launched:
            return
        self.launched.popleft()
        for out in self.scheduler.complete(self.executor.collect()):
            self.tokens[out.request_id].extend(out.new_token_ids)
            if out.finish_reason is not None:
                self.finished[out.request_id] = out.finish_reason

    @invariant()
    def scheduler_invariants_hold(self) -> None:
        self.scheduler.check_invariants()

    @invariant()
    def tokens_so_far_are_greedy(self) -> None:
        for request_id, tokens in self.tokens.items():
            if tokens and request_id not in self.finished:
                spec = self.specs[request_id]
                assert tokens == greedy(spec.prompt_token_ids, len(tokens)), request_id

    def teardown(self) -> None:
        for _ in range(500):
            if not self.scheduler.has_work:
                break
            self.step()
        assert not self.scheduler.has_work
        for request_id, spec in self.specs.items():
            tokens = self.tokens[request_id]
            reason = self.finished[request_id]
            assert tokens == greedy(spec.prompt_token_ids, len(tokens)), request_id
            if reason is FinishReason.LENGTH:
                assert len(tokens) == spec.max_tokens
            elif reason is FinishReason.STOP:
                assert tokens[-1] == spec.eos_token_id and spec.eos_token_id not in tokens[:-1]
            else:
                assert reason is FinishReason.ABORT and len(tokens) <= spec.max_tokens
        self.executor.close()


class SpeculativeTorchSchedulerMachine(TorchSchedulerMachine):
    num_speculative_tokens = 2


_settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestTorchScheduler = TorchSchedulerMachine.TestCase
TestTorchScheduler.settings = _settings
TestSpeculativeTorchScheduler = SpeculativeTorchSchedulerMachine.TestCase
TestSpeculativeTorchScheduler.settings = _settings


class TorchExecutorSchedulerMachine(SchedulerStateMachine):
    """The scheduler's own state machine (tokensched.testing) with this executor in place of the fake.

    Its checks (positions computed exactly once per residency, overlap safety,
    liveness, no leaks) run against real plans executed by a real model; on top,
    every request's outputs so far must be plain greedy decoding.
    """

    def make_executor(self, config: SchedulerConfig, seed: int) -> Executor:
        return TorchExecutor(
            model=MODEL,
            num_blocks=config.num_blocks,
            block_size=config.block_size,
            dtype=torch.float64,
            seed=seed,
            num_speculative_tokens=config.num_speculative_tokens,
        )

    @invariant()
    def outputs_are_greedy(self) -> None:
        if self.scheduler is None:
            return
        for model in self.models.values():
            prompt = list(model.spec.prompt_token_ids)
            outputs = model.tokens[len(prompt) :]
            if outputs:
                assert outputs == greedy(prompt, len(outputs)), model.spec.request_id


TestSchedulerMachineWithTorchExecutor = TorchExecutorSchedulerMachine.TestCase
TestSchedulerMachineWithTorchExecutor.settings = settings(
    max_examples=30, stateful_step_count=30, deadline=None, suppress_health_check=list(HealthCheck)
)
