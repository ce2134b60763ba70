"""A hypothesis state machine for the whole scheduler; subclass it to property-test your own policy.

Random submits, plans, results (random accept lengths, EOS, failures),
aborts at any time and malformed input, under small pools so preemption is
common. After every rule it checks every machine invariant; it also keeps its
own model of every request and checks, independently of the scheduler's
internals:

- every position of every request is computed exactly once per residency
  (contiguous from the cached prefix, across chunking, speculation rollback,
  preemption and resume), and results apply in step order;
- planned tokens equal the request's known tokens (prompt, then outputs);
- plans respect the token budget and the running limit;
- no KV slot is written while a step in flight still references its block
  for another request (overlap safety);
- refused input (bad results, unknown ids, duplicate ids) changes nothing;
- aborts free everything, and in the end every request finishes (liveness);
- every promise the policy declares (:mod:`tokensched.policies.promises`)
  holds after every plan: override :meth:`promises` to check others.

Usage::

    class MyPolicyMachine(SchedulerStateMachine):
        def make_policy(self) -> Policy:
            return MyPolicy()

    TestMyPolicy = MyPolicyMachine.TestCase
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import attrs
from hypothesis import event
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tokensched.config import RequestSpec, SchedulerConfig
from tokensched.errors import CapacityError, ExecutorError, InvalidRequest, QueueFull, UnknownRequest
from tokensched.executor import Executor, RequestMirror
from tokensched.machines.blocks import BlockState
from tokensched.machines.request import Preempted, Waiting, held_blocks
from tokensched.plan import PLACEHOLDER_TOKEN, FinishReason, RequestEvent, RequestOutput, StepPlan, StepResult
from tokensched.policies.base import KeyDependence, Policy, key_dependence
from tokensched.policies.fcfs import FCFSPolicy
from tokensched.policies.promises import Promise, promises_of
from tokensched.scheduler import Scheduler
from tokensched.testing.fake_executor import FakeExecutor
from tokensched.testing.promises import observe_plan
from tokensched.testing.strategies import EOS, PREFIXES, VOCAB, boundary, request_specs, scheduler_configs
from tokensched.views import PlanOutcome

MAX_DRAIN_STEPS = 5000


@attrs.define
class RequestModel:
    spec: RequestSpec
    tokens: list[int]
    residency: int = 0  # how many times it entered the running set
    scheduled: int = 0
    computed: int = 0
    finish: FinishReason | None = None


@attrs.frozen
class Row:
    step_id: int
    request_id: str
    residency: int
    start: int
    num_tokens: int
    num_drafts: int
    sample: bool


class SchedulerStateMachine(RuleBasedStateMachine):
    """Override :meth:`make_policy` (and optionally :meth:`make_executor`, :meth:`configs`, :meth:`draw_setup`)."""

    def make_policy(self) -> Policy:
        return FCFSPolicy()

    def make_executor(self, config: SchedulerConfig, seed: int) -> Executor:
        return FakeExecutor(
            num_kv_blocks=config.num_blocks,
            block_size=config.block_size,
            seed=seed,
            vocab_size=VOCAB,
            eos_token_id=EOS,
            eos_prob=0.1,
            num_drafts=config.num_speculative_tokens,
            accept_prob=0.6,
            fail_prob=0.05,
        )

    def configs(self) -> st.SearchStrategy[SchedulerConfig]:
        return scheduler_configs()

    def draw_setup(self, data: st.DataObject) -> tuple[SchedulerConfig, Policy]:
        """The run's config and policy; override to draw both together (a bench profile sets both)."""
        return data.draw(self.configs(), label="config"), self.make_policy()

    def promises(self) -> tuple[Promise, ...]:
        """Checked after every plan; by default what the policy declares."""
        return promises_of(self.s.policy)

    def __init__(self) -> None:
        super().__init__()
        self.scheduler: Scheduler | None = None

    # ------------------------------------------------------------- setup
    @initialize(data=st.data(), seed=st.integers(0, 2**16))
    def setup(self, data: st.DataObject, seed: int) -> None:
        config, policy = self.draw_setup(data)
        self.executor = self.make_executor(config, seed)
        self.scheduler = Scheduler(config, policy=policy, clock=self.executor.now)
        if config.prefix_eviction == "pinned" and config.enable_prefix_caching:
            self.scheduler.pin_prefix(list(data.draw(st.sampled_from(PREFIXES[1:]), label="pinned prefix")))
        self.launched: deque[tuple[StepPlan, list[Row]]] = deque()
        self.models: dict[str, RequestModel] = {}
        self.mirror = RequestMirror()
        # in-flight step -> block -> (request, residency, writes?) for every block its rows read or write
        self.step_blocks: dict[int, dict[int, set[tuple[str, int, bool]]]] = {}
        self.next_id = 0
        self.preempted_untold: list[str] = []  # preempted by a plan, told with the next complete() or fail()

    @property
    def s(self) -> Scheduler:
        assert self.scheduler is not None
        return self.scheduler

    def fingerprint(self) -> object:
        s = self.s
        pool = s.pool
        return (
            sorted(
                (rid, type(r.state).__name__, tuple(r.tokens), tuple(held_blocks(r.state))) for rid, r in s.live.items()
            ),
            [r.request_id for r in s.waiting],
            bytes(pool.state(b) for b in range(pool.num_blocks)),
            tuple(pool.refcount(b) for b in range(pool.num_blocks)),
            [st.step_id for st in s.steps],
            s.stats(),
        )

    # ------------------------------------------------------------- rules
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        cfg = self.s.config
        spec = data.draw(request_specs(f"r{self.next_id}", config=cfg), label="spec")
        # Drafts are capped at the room left: no request ever holds more blocks than this.
        worst = -(-(len(spec.prompt_token_ids) + spec.max_tokens - 1) // cfg.block_size)
        if worst == cfg.num_blocks:
            boundary("request fills the pool exactly")
        elif worst == cfg.num_blocks + 1:
            boundary("request one block over the pool")
        before = self.fingerprint()
        try:
            self.s.submit(spec)
        except (InvalidRequest, CapacityError, QueueFull) as refused:
            assert self.fingerprint() == before, "a refused submit changed the scheduler"
            if isinstance(refused, CapacityError):
                assert worst > cfg.num_blocks, f"refused a request that fits: {worst} of {cfg.num_blocks} blocks"
            return
        assert worst <= cfg.num_blocks, f"accepted a request that can never fit: {worst} of {cfg.num_blocks} blocks"
        self.next_id += 1
        self.models[spec.request_id] = RequestModel(spec, list(spec.prompt_token_ids))

    @rule(data=st.data(), count=st.integers(2, 4))
    def submit_burst(self, data: st.DataObject, count: int) -> None:
        for _ in range(count):
            self.submit(data)

    @rule(rounds=st.integers(1, 6))
    def engine_steps(self, rounds: int) -> None:
        """What the engine loop does: plan until the scheduler says no, then apply the oldest result."""
        for _ in range(rounds):
            for _ in range(self.s.config.max_steps_in_flight):
                self.plan()
            if self.launched:
                self.complete_oldest()

    @precondition(lambda self: self.scheduler is not None and bool(self.scheduler.live))
    @rule(data=st.data())
    def submit_duplicate_is_refused(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.s.live)), label="duplicate id")
        before = self.fingerprint()
        try:
            self.s.submit(RequestSpec(request_id=rid, prompt_token_ids=[1, 2, 3], max_tokens=1))
        except InvalidRequest:
            assert self.fingerprint() == before
        else:
            raise AssertionError(f"duplicate id {rid!r} was accepted")

    @rule()
    def plan(self) -> None:
        plan, record = observe_plan(self.s, self.promises())
        self.preempted_untold.extend(r.request_id for r in record.preempted)
        outcome = self.s.last_plan_outcome
        assert (plan is not None) == (outcome is PlanOutcome.PLANNED), outcome
        if outcome is PlanOutcome.WINDOW_FULL:
            assert len(self.s.steps) == self.s.config.max_steps_in_flight
        elif outcome is PlanOutcome.IDLE:
            assert not self.s.running_requests() and not self.s.waiting_requests()
        elif outcome is PlanOutcome.BLOCKED:
            assert len(self.s.steps) > 0, "blocked with no step in flight to wait for"
        if record.preempted:
            boundary("a preemption (victim order checked)")
        if record.admitted and record.still_waiting:
            boundary("an admission passing requests that keep waiting (admission order checked)")
            if record.resort_keys is not None:
                boundary("an admission passing requests right after a re-sort (dynamic order checked)")
            seqs = [r.seq for r in record.waiting_before]
            if key_dependence(record.policy) is KeyDependence.CACHED_PREFIX and seqs != sorted(seqs):
                boundary("an admission passing requests in an order the cache moved (current order checked)")
        if plan is None:
            return
        rows = self._check_plan(plan)
        self._note_boundaries(plan)
        if PLACEHOLDER_TOKEN in plan.token_ids:
            event("plan with a placeholder (overlap)")
        if any(plan.draft_token_ids):
            event("plan verifies drafts")
        if plan.truncated_block_tables:
            event("speculative rollback freed blocks")
        if any(new.num_cached_tokens for new in plan.new_requests):
            event("prefix cache hit")
        if self.s.stats().num_preemptions:
            event("a preemption happened")
        if self.s.pool.num_pending:
            event("blocks pending release")
        if self.s._retention is not None and len(self.s._retention):
            event("a session's KV is retained")
        self.executor.launch(plan)
        self.launched.append((plan, rows))

    @precondition(lambda self: self.scheduler is not None and bool(self.launched))
    @rule()
    def complete_oldest(self) -> None:
        plan, rows = self.launched.popleft()
        del self.step_blocks[plan.step_id]
        try:
            result = self.executor.collect()
        except ExecutorError as error:
            failed_ids = {row.request_id for row in rows if not self._is_stale(row.request_id, row.residency)}
            live = set(self.s.live)
            outputs = self._take_events(self.s.fail(plan.step_id, error), live)
            for out in outputs:
                assert out.request_id in failed_ids, f"{out.request_id}: output from a failed step it was not in"
                if out.event is RequestEvent.ROLLED_BACK:
                    assert out.request_id in self.s.live and out.finish_reason is None
                    continue
                assert out.finish_reason is FinishReason.ERROR and out.event is None
                self._on_finished(out)
            return
        assert result.step_id == plan.step_id, "executor returned results out of order"
        live = set(self.s.live)
        outputs = self._take_events(self.s.complete(result), live)
        self._check_result(rows, result, outputs)

    def _take_events(self, outputs: Sequence[RequestOutput], live: set[str]) -> list[RequestOutput]:
        """Check the preemption events at the head of ``outputs`` against the plans' preemptions; return the rest."""
        told = [out for out in outputs if out.event is RequestEvent.PREEMPTED]
        assert outputs[: len(told)] == told, "preemption events come first"
        assert not any(out.new_token_ids or out.finished for out in told)
        expected = sorted(rid for rid in self.preempted_untold if rid in live)  # live when the call began
        assert sorted(out.request_id for out in told) == expected, (
            f"preempted {expected} but told {[out.request_id for out in told]}"
        )
        self.preempted_untold.clear()
        return list(outputs[len(told) :])

    @precondition(lambda self: self.scheduler is not None and bool(self.launched))
    @rule(kind=st.sampled_from(["wrong_step", "missing_row", "extra_tokens", "negative_token"]))
    def malformed_result_is_refused(self, kind: str) -> None:
        plan, _ = self.launched[0]
        rows: list[list[int]] = [[1] if s else [] for s in plan.sample]
        step_id = plan.step_id
        if kind == "wrong_step":
            step_id += 1
        elif kind == "missing_row":
            rows = rows[:-1]
        elif kind == "extra_tokens":
            rows[0] = [1] * (2 + len(plan.draft_token_ids[0]))
        else:
            rows[0] = [-5]
        before = self.fingerprint()
        try:
            self.s.complete(StepResult(step_id, rows))
        except InvalidRequest:
            assert self.fingerprint() == before, f"a refused result ({kind}) changed the scheduler"
        else:
            raise AssertionError(f"a malformed result ({kind}) was accepted")

    @precondition(lambda self: self.scheduler is not None and bool(self.scheduler.live))
    @rule(data=st.data())
    def abort(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.s.live)), label="abort id")
        out = self.s.abort(rid)
        assert out.finish_reason is FinishReason.ABORT
        self._on_finished(out)
        assert rid not in self.s.live and rid not in self.s.running

    @rule()
    def abort_unknown_is_refused(self) -> None:
        before = self.fingerprint() if self.scheduler is not None else None
        if self.scheduler is None:
            return
        try:
            self.s.abort("no-such-request")
        except UnknownRequest:
            assert self.fingerprint() == before
        else:
            raise AssertionError("aborting an unknown id succeeded")

    # -------------------------------------------------------- invariants
    @invariant()
    def machines_are_consistent(self) -> None:
        if self.scheduler is not None:
            self.scheduler.check_invariants()

    @invariant()
    def stats_balance_the_pool(self) -> None:
        if self.scheduler is None:
            return
        stats = self.s.stats()
        counts = self.s.pool.counts()
        assert stats.pool_balance == (
            counts[BlockState.FREE],
            counts[BlockState.EVICTABLE],
            counts[BlockState.OWNED] + counts[BlockState.COMMITTED],
            counts[BlockState.PENDING],
        ), f"stats {stats.pool_balance} disagree with the pool {counts}"
        assert sum(stats.pool_balance) == stats.num_total_blocks
        views = self.s.running_requests()
        assert [v.request_id for v in views] == list(self.s.running)
        assert all(v.state in ("prefilling", "decoding") for v in views)
        assert all(v.state in ("waiting", "preempted") for v in self.s.waiting_requests())

    def teardown(self) -> None:
        if self.scheduler is None:
            return
        for _ in range(MAX_DRAIN_STEPS):
            if not self.s.has_work and not self.launched:
                break
            self.plan()
            if self.launched:
                self.complete_oldest()
            self.s.check_invariants()
        assert not self.s.live, f"liveness: requests never finished: {sorted(self.s.live)}"
        assert not self.launched and len(self.s.steps) == 0
        pool = self.s.pool
        counts = pool.counts()
        assert counts[BlockState.FREE] + counts[BlockState.EVICTABLE] == pool.num_blocks, f"blocks leaked: {counts}"
        for rid, model in self.models.items():
            assert model.finish is not None, f"request {rid!r} finished without the caller being told"

    # ----------------------------------------------------------- checks
    def _check_plan(self, plan: StepPlan) -> list[Row]:
        cfg = self.s.config
        assert plan.num_tokens <= cfg.max_batched_tokens, "token budget exceeded"
        assert plan.num_requests <= cfg.max_running, "running limit exceeded"
        assert len(set(plan.request_ids)) == plan.num_requests, "a request scheduled twice in one step"
        assert len(plan.slot_mapping) == plan.num_tokens
        for rid in plan.removed_request_ids:
            assert rid in self.models
        for new in plan.new_requests:
            model = self.models[new.request_id]
            model.residency += 1
            model.scheduled = model.computed = new.num_cached_tokens
            assert list(new.token_ids) == model.tokens, f"{new.request_id}: resent tokens differ from its history"
        self.mirror.begin(plan)
        bs = plan.block_size
        in_flight_blocks = self.step_blocks
        rows: list[Row] = []
        used: dict[int, set[tuple[str, int, bool]]] = {}
        for i, rid in enumerate(plan.request_ids):
            model = self.models[rid]
            lo, hi = plan.token_offsets[i], plan.token_offsets[i + 1]
            start = plan.num_computed_tokens[i]
            nd = len(plan.draft_token_ids[i])
            assert start == model.scheduled, f"{rid}: planned from position {start}, expected {model.scheduled}"
            real = plan.token_ids[lo : hi - nd]
            for j, token in enumerate(real):
                pos = start + j
                if token == PLACEHOLDER_TOKEN:
                    # stands for the token its previous step (still in flight) samples
                    assert j == 0 and pos >= len(model.tokens), f"{rid}: placeholder at {pos}"
                else:
                    assert pos < len(model.tokens) and token == model.tokens[pos], f"{rid}: wrong token at {pos}"
            written = {slot // bs for slot in plan.slot_mapping[lo:hi]}
            for block in self.mirror.block_table(rid):
                used.setdefault(block, set()).add((rid, model.residency, block in written))
            for block in written:
                for step_id, blocks in in_flight_blocks.items():
                    for other, residency, writes in blocks.get(block, ()):
                        if (other, residency) == (rid, model.residency):
                            continue
                        # A step in flight still writes this block, or reads it for a result that counts.
                        assert writes or not self._is_stale(other, residency), (
                            f"step {plan.step_id} writes block {block} for {rid} while step {step_id} "
                            f"uses it for {other}"
                        )
            model.scheduled = start + (hi - lo)
            rows.append(Row(plan.step_id, rid, model.residency, start, hi - lo, nd, plan.sample[i]))
        in_flight_blocks[plan.step_id] = used
        return rows

    def _note_boundaries(self, plan: StepPlan) -> None:
        """Count the edges this plan reached (see :mod:`tokensched.testing.strategies`)."""
        s = self.s
        cfg = s.config
        drafts = any(plan.draft_token_ids)
        if plan.num_tokens == cfg.max_batched_tokens:
            boundary("token budget filled exactly")
            if drafts:
                boundary("token budget filled exactly while drafts are verified")
        if any(d and b for d, b in zip(plan.draft_token_ids, plan.new_block_ids, strict=True)):
            boundary("drafts grow a row into a new block")
        if any(len(new.token_ids) % plan.block_size == 0 for new in plan.new_requests):
            boundary("a request enters with its tokens ending on a block edge")
        if s.pool.num_free == 0:
            boundary("no free block after a plan")
        if s.steps.full and s.running and all(r.inflight_steps for r in s.running.values()):
            boundary("every running request in a step in flight")

    def _is_stale(self, request_id: str, residency: int) -> bool:
        """Whether a row planned for ``request_id`` in ``residency`` will be discarded when its result comes."""
        model = self.models[request_id]
        request = self.s.live.get(request_id)
        return (
            model.finish is not None
            or model.residency != residency
            or (request is not None and isinstance(request.state, Waiting | Preempted))
        )

    def _check_result(self, rows: list[Row], result: StepResult, outputs: list[RequestOutput]) -> None:
        by_id = {out.request_id: out for out in outputs}
        assert len(by_id) == len(outputs), "two outputs for one request"
        for row, sampled in zip(rows, result.sampled_token_ids, strict=True):
            model = self.models[row.request_id]
            out = by_id.pop(row.request_id, None)
            if self._is_stale(row.request_id, row.residency):  # finished, aborted or preempted since planned
                assert out is None, f"{row.request_id}: output from a stale step"
                continue
            assert model.computed == row.start, f"{row.request_id}: applied from {row.start}, computed {model.computed}"
            if row.num_drafts:
                accepted = len(sampled) - 1
                model.computed = row.start + row.num_tokens - row.num_drafts + accepted
                model.scheduled = model.computed
            else:
                model.computed = row.start + row.num_tokens
            if not row.sample:
                assert out is None
                continue
            assert out is not None, f"{row.request_id}: sampled but no output"
            self._check_tokens(model, sampled, out)
            model.tokens.extend(out.new_token_ids)
            if out.finished:
                self._on_finished(out)
        assert not by_id, f"outputs for requests not in the step: {sorted(by_id)}"

    def _check_tokens(self, model: RequestModel, sampled: list[int], out: RequestOutput) -> None:
        spec = model.spec
        expected: list[int] = []
        reason: FinishReason | None = None
        outputs = len(model.tokens) - len(spec.prompt_token_ids)
        for token in sampled:
            expected.append(token)
            if (token == spec.eos_token_id and not spec.ignore_eos) or token in spec.stop_token_ids:
                reason = FinishReason.STOP
                break
            if outputs + len(expected) >= spec.max_tokens:
                reason = FinishReason.LENGTH
                break
        assert out.new_token_ids == expected, f"{out.request_id}: got {out.new_token_ids}, expected {expected}"
        assert out.finish_reason is reason, f"{out.request_id}: finish {out.finish_reason}, expected {reason}"

    def _on_finished(self, out: RequestOutput) -> None:
        model = self.models[out.request_id]
        assert model.finish is None, f"{out.request_id} finished twice"
        model.finish = out.finish_reason
