"""The simulated GPU: runs StepPlans on a virtual clock, with a roofline cost per step.

Nothing is computed: each step's duration comes from :class:`~tokensched_sim.cost.CostModel`
and its tokens from a seeded RNG. A request emits random non-EOS ids until it
reaches its target output length (given by the workload), where the EOS id is
forced; with speculative decoding, the executor proposes drafts and accepts
each one with probability ``acceptance_rate`` until the first rejection, then
adds a bonus token. One seed reproduces a whole run.

Virtual time: ``now()`` is the host's clock. A launched step starts when the
device is free (so with two steps in flight the second starts when the first
ends), and ``collect()`` moves the clock to the end of the step it returns.
``wait_until(t)`` jumps the clock forward, as an idle host sleeping would.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs

from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.errors import TokenschedError
from tokensched.executor import VirtualClock
from tokensched.plan import StepPlan, StepResult
from tokensched_sim.cost import CostModel, Deployment
from tokensched_sim.decode_cost import DecodeCost
from tokensched_sim.draft import KIMI_EAGLE3_ACCEPT_LENGTH, KIMI_EAGLE3_NUM_DRAFTS, acceptance_rate_for_length
from tokensched_sim.shape import BatchShape
from tokensched_sim.tokens import OutputLengths, SimStats, TokenSource
from tokensched_sim.transfer import HOST_LINKS, HostLink, TransferModel


@attrs.frozen(slots=True)
class _InFlight:
    end: float
    result: StepResult


_Step = tuple[float, list[list[int]], list[list[int]] | None, float | None]
"""A step of a run in flight: its end, tokens, drafts and seconds (a StepResult's parts, without the object)."""


class SimExecutor(VirtualClock):
    """An :class:`~tokensched.executor.Executor` whose device is a cost model on a virtual clock.

    >>> from tokensched_sim import Deployment, SimExecutor
    >>> ex = SimExecutor(Deployment(model="dense-8b", gpu="h100", tp=1), output_lengths={"a": 3})
    >>> ex.num_kv_blocks
    28863

    Args:
        deployment: model, GPU, TP degree and efficiencies (default: Kimi-K2.5-class on 4x B200).
        block_size: tokens per KV block; ``num_kv_blocks`` follows from memory left after weights.
        output_lengths: target output length per request id (mapping or callable); EOS is forced there.
            The requests must name the same ``eos_token_id`` (or list it in ``stop_token_ids``).
        eos_token_id: the id emitted at the target length; random tokens are never this id.
        num_speculative_tokens: drafts proposed per request per step (0: no speculation; 3 is typical).
            Match ``SchedulerConfig.num_speculative_tokens``. ``None``: the deployment's. A deployment
            built without speculation is given it (its draft head then takes memory and time).
        acceptance_rate: probability each draft is accepted, given all earlier ones were (drawn per draft).
        mean_accepted_length: instead of ``acceptance_rate``, the tokens per verification (bonus
            included) to reproduce; with neither, the published Kimi EAGLE-3 figure (2.54 at 3 drafts).
        seed: seeds the one RNG behind every token and acceptance; same seed and plans, same results.
        num_kv_blocks: override the capacity computed from memory (e.g. a small pool for tests).
        host_link: the link a plan's host KV copies take (a name in ``transfer.HOST_LINKS`` or a
            ``HostLink``); they overlap the step (:mod:`tokensched_sim.transfer`).
    """

    def __init__(
        self,
        deployment: Deployment | None = None,
        *,
        block_size: int = 16,
        output_lengths: OutputLengths | None = None,
        eos_token_id: int = 0,
        num_speculative_tokens: int | None = None,
        acceptance_rate: float | None = None,
        mean_accepted_length: float | None = None,
        seed: int = 0,
        num_kv_blocks: int | None = None,
        host_link: str | HostLink = "pcie5-x16",
    ) -> None:
        deployment = deployment or Deployment()
        k = deployment.num_speculative_tokens if num_speculative_tokens is None else num_speculative_tokens
        if k < 0:
            raise ValueError(f"num_speculative_tokens must be >= 0, got {k}")
        if k != deployment.num_speculative_tokens:
            if deployment.num_speculative_tokens:
                raise ValueError(
                    f"num_speculative_tokens={k} but the deployment speculates {deployment.num_speculative_tokens}"
                )
            deployment = Deployment.model_validate({**dict(deployment), "num_speculative_tokens": k})
        num_speculative_tokens = k
        if acceptance_rate is not None and mean_accepted_length is not None:
            raise ValueError("give acceptance_rate or mean_accepted_length, not both")
        if acceptance_rate is None:
            length = KIMI_EAGLE3_ACCEPT_LENGTH if mean_accepted_length is None else mean_accepted_length
            drafts = k or KIMI_EAGLE3_NUM_DRAFTS
            if mean_accepted_length is None:  # the published per-draft rate, whatever k is
                drafts = KIMI_EAGLE3_NUM_DRAFTS
            acceptance_rate = acceptance_rate_for_length(length, drafts)
        self.deployment = deployment
        self.cost_model = CostModel(self.deployment)
        self._decode_cost = DecodeCost(self.cost_model)  # a run's steps, priced from their sums
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if num_kv_blocks is not None and num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {num_kv_blocks}")
        self._block_size = block_size
        self._num_kv_blocks = self.cost_model.num_kv_blocks(block_size) if num_kv_blocks is None else num_kv_blocks
        if self._num_kv_blocks < 1:
            raise ValueError(f"block_size {block_size} exceeds the {self.cost_model.num_kv_tokens}-token KV capacity")
        self.stats = SimStats()
        self.tokens = TokenSource(
            vocab_size=self.deployment.model.vocab_size,
            eos_token_id=eos_token_id,
            output_lengths=output_lengths,
            num_speculative_tokens=num_speculative_tokens,
            acceptance_rate=acceptance_rate,
            seed=seed,
            stats=self.stats,
        )
        self.eos_token_id = eos_token_id
        self.num_speculative_tokens = num_speculative_tokens
        self.acceptance_rate = acceptance_rate
        self._busy_until = 0.0
        self._in_flight: deque[_InFlight] = deque()
        if isinstance(host_link, str):
            if host_link not in HOST_LINKS:
                raise ValueError(f"unknown host_link {host_link!r}; known: {', '.join(HOST_LINKS)}")
            host_link = HOST_LINKS[host_link]
        self.transfers = TransferModel(self.cost_model, host_link, block_size)

    # The Executor protocol -------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_kv_blocks(self) -> int:
        return self._num_kv_blocks

    def launch(self, plan: StepPlan) -> None:
        """Sample the step's tokens now (launch order fixes the RNG order) and queue its result."""
        self.tokens.admit(plan)
        result, duration = self._run(plan)
        start = self._busy_until if self._busy_until > self._clock else self._clock
        self._busy_until = start + duration
        self._in_flight.append(_InFlight(self._busy_until, result))
        stats = self.stats
        stats.num_steps += 1
        stats.busy_s += duration
        stats.num_tokens += plan.num_tokens

    def collect(self) -> StepResult:
        if not self._in_flight:
            raise TokenschedError("collect() with no step in flight")
        done = self._in_flight.popleft()
        if done.end > self._clock:
            self._clock = done.end
        return done.result

    def launch_run(self, run: DecodeRun, until: float) -> RunResult:
        """Run the steps of ``run`` the single steps would have run before ``until``; returns those completed.

        Multi-step decoding (:mod:`tokensched.decode_run`): step ``j + depth``
        is planned once step ``j`` completes, if the clock is still before
        ``until`` and the cursor allows it, and is launched as :meth:`launch`
        would (its tokens drawn in launch order, its time from the same cost
        model). With two groups the run's first step is the one in flight
        here, and the run's last launched step is left in flight, as the
        single steps would leave it. Inside the run a step in flight is a
        tuple, not a :class:`StepResult`: only one left in flight becomes one.
        """
        until = min(until, run.admission_shut_until)  # past it, single steps might admit a waiting request
        steps = self.begin_run(run)
        steps.start()
        steps.drive(until)
        return steps.result()

    def begin_run(self, run: DecodeRun) -> SimRun:
        """``run``'s steps, launched and collected one call at a time by a caller that paces them itself.

        What :meth:`launch_run` does in one loop (it uses the same object),
        for a driver that must act between a run's steps: the DP-attention
        lockstep (:mod:`tokensched.benchmark.dp_attention`) ends each step of
        every rank's run when the slowest rank's step does, by moving each
        rank's clock between the steps. Call :meth:`SimRun.start` first.
        """
        return SimRun(self, run)

    def _run_launcher(self, run: DecodeRun, cursor: RunCursor, pricer: DecodeCost) -> Callable[[int], _Step | None]:
        """``launch(j)``: plan step ``j`` of ``run`` with ``cursor`` and launch it; None when the run ends before it.

        A closure over what stays fixed during the run, so that a step looks
        nothing up twice: its tokens are drawn at launch (launch order fixes
        the RNG order, as in :meth:`launch`) and it is priced from the sums
        :meth:`BatchShape.decodes` takes, which the sampler adds up on its
        walk over the rows.
        """
        if run.chunk_tokens:
            return self._chunk_run_launcher(run, cursor)
        sample = self.tokens.run_sampler(run.request_ids)  # sample(rows, drafts, pos): the run's lookups made once
        price = pricer.run_step_time  # step_time, then draft_time of the rows that propose
        plan, depth = cursor.plan, run.depth
        groups = [run.group(g) for g in range(depth)]  # step j's rows are run.group(j): groups[j % depth]
        k, stats = self.num_speculative_tokens, self.stats

        def launch(j: int) -> _Step | None:
            drafts = plan(j)
            if drafts is None:
                return None
            rows = groups[j % depth]
            tokens, proposals, num_proposing, proposing_kv, t, pairs, kv = sample(rows, drafts, cursor.pos)
            duration = price(len(rows), t, pairs, kv, num_proposing, proposing_kv, k)
            start = self._busy_until if self._busy_until > self._clock else self._clock
            end = self._busy_until = start + duration
            stats.num_steps += 1
            stats.busy_s += duration
            stats.num_tokens += t
            return end, tokens, proposals, duration

        return launch

    def _chunk_run_launcher(self, run: DecodeRun, cursor: RunCursor) -> Callable[[int], _Step | None]:
        """``launch(j)`` for a run whose steps carry a prefill chunk (the last row, which samples nothing).

        The decodes are drawn as in a decode run (the chunk row, last in the
        single step's plan, draws nothing and proposes nothing, so the draws
        are the same), and the step is priced as :meth:`_run` prices the
        single step: :meth:`_price` of the :class:`BatchShape` that
        ``sample_step`` builds for the plan (the chunk a prefill of ``n``
        tokens after ``c`` computed).
        """
        sample = self.tokens.run_sampler(run.request_ids)
        price = self._price
        group, plan, pos, chunks = run.group, cursor.plan, cursor.pos, cursor.chunks
        stats = self.stats

        def launch(j: int) -> _Step | None:
            drafts = plan(j)
            if drafts is None:
                return None
            rows = group(j)
            tokens, proposals, num_proposing, proposing_kv, t, pairs, kv = sample(rows, drafts, pos)
            n = chunks[j]
            c = pos[-1]
            shape = BatchShape(t + n, t, n * c + n * (n + 1) // 2, c + n, c, pairs, kv, len(rows) + 1, n, 1, 0)
            duration = price(shape, num_proposing, proposing_kv)
            start = self._busy_until if self._busy_until > self._clock else self._clock
            end = self._busy_until = start + duration
            stats.num_steps += 1
            stats.busy_s += duration
            stats.num_tokens += t + n
            return end, tokens, proposals, duration

        return launch

    # Internals --------------------------------------------------------------------------------------

    @property
    def num_steps_in_flight(self) -> int:
        return len(self._in_flight)

    def load_is_cheaper(self, num_blocks: int, block_size: int, context_tokens: int) -> bool:
        """The scheduler's LoadCost hook: a host load beats recomputing on this deployment and link."""
        return self.transfers.load_is_cheaper(num_blocks, block_size, context_tokens)

    def target_output_length(self, request_id: str) -> int | None:
        """The length at which ``request_id`` gets its EOS, as the workload gave it (None: never)."""
        return self.tokens.target_output_length(request_id)

    def _price(self, shape: BatchShape, num_proposing: int, proposing_kv_tokens: int) -> float:
        """A step's duration on the cost model (host copies aside): its batch, then the draft head's passes.

        One pass where the engine mixes prefill and decodes in a batch (or the
        batch is one kind), else two; single steps and a run's steps with a
        prefill chunk are priced here alike.
        """
        model = self.cost_model
        if model.engine.mixed_batches or not shape.num_prefill_tokens or shape.num_tokens == shape.num_prefill_tokens:
            duration = model.step_time(shape)
        else:  # the engine runs the prefill chunks and the decodes as two forward passes
            duration = model.split_step_time(shape)  # step_time of each half of shape.split(), added
        if num_proposing:
            duration += model.draft_time(num_proposing, proposing_kv_tokens, self.num_speculative_tokens)
        return duration

    def _run(self, plan: StepPlan) -> tuple[StepResult, float]:
        """The step's tokens from the RNG and its duration from the cost model."""
        sampled, shape = self.tokens.sample_step(plan)  # sample(plan) and BatchShape.from_plan(plan)
        duration = self._price(shape, sampled.num_proposing, sampled.proposing_kv_tokens)
        duration = self.transfers.step_time(duration, plan)  # host KV copies, overlapped
        result = StepResult(
            step_id=plan.step_id,
            sampled_token_ids=sampled.tokens,
            draft_token_ids=sampled.drafts,
            logprobs=sampled.logprobs,
            elapsed=duration,
        )
        return result, duration


class SimRun:
    """A :class:`~tokensched.decode_run.DecodeRun` on a :class:`SimExecutor`, a step a call.

    Made by :meth:`SimExecutor.begin_run` (and by :meth:`SimExecutor.launch_run`,
    which walks it in one loop): the steps in flight when the run began join
    it, :meth:`start` launches the run's first ``depth`` steps, and after each
    :meth:`collect` the caller may :meth:`launch_next`. Each step is launched
    as :meth:`SimExecutor.launch` would launch it (tokens drawn at launch,
    starting when the device is free and not before the executor's clock), so
    a caller that moves the clock with ``wait_until`` between steps runs
    exactly the single steps it would have run at those times.
    :meth:`result` hands back the steps collected; steps launched and not
    collected stay in flight on the executor, as single steps would.
    """

    __slots__ = ("_executor", "cursor", "done", "launch_step", "pending", "run")

    def __init__(self, executor: SimExecutor, run: DecodeRun) -> None:
        in_flight = executor._in_flight
        if len(in_flight) != run.launched:
            raise TokenschedError(f"launch_run() with {len(in_flight)} steps in flight, expected {run.launched}")
        executor.tokens.forget(run.removed_request_ids)
        cursor = RunCursor(run)
        first = run.first_step_id
        for j in range(run.launched):
            if cursor.plan(j) is None or in_flight[j].result.step_id != first + j:
                raise TokenschedError(f"launch_run(): step {first + j} in flight is not the run's")
        pricer = executor._decode_cost
        if pricer.model is not executor.cost_model:  # swapped since (a DP rank's view, the decode-only bench model)
            pricer = executor._decode_cost = DecodeCost(executor.cost_model)
        self._executor = executor
        self.run = run
        self.cursor = cursor
        self.launch_step = executor._run_launcher(run, cursor, pricer)  # launch(j): step j, or None if it ends
        self.pending: deque[_Step] = deque(
            (f.end, f.result.sampled_token_ids, f.result.draft_token_ids, f.result.elapsed) for f in in_flight
        )
        self.done: list[_Step] = []

    def start(self) -> None:
        """Launch the run's steps up to its depth (step 0 without a step in flight); they must fit the run."""
        run, pending = self.run, self.pending
        for j in range(run.launched, run.depth):
            step = self.launch_step(j)
            if step is None:
                raise TokenschedError(f"launch_run(): step {run.first_step_id + j} does not fit the run")
            pending.append(step)
        self._executor._in_flight.clear()  # now in ``pending``; what is left there at the end goes back

    def launch_next(self) -> bool:
        """Launch the step after those launched, if the cursor plans it; False when the run ends before it."""
        step = self.launch_step(len(self.done) + self.run.depth - 1)
        if step is None:
            return False
        self.pending.append(step)
        return True

    def collect(self) -> bool:
        """Collect the oldest step launched (the clock moves to its end); returns whether the run may go on."""
        step = self.pending.popleft()
        j = len(self.done)
        self.done.append(step)
        executor = self._executor
        if step[0] > executor._clock:
            executor._clock = step[0]
        return self.cursor.take(j, step[1], step[2])

    def drive(self, until: float) -> None:
        """``while collect() and clock < until and launch_next()``, in one loop (what ``launch_run`` runs).

        Why: a run's step of a row or two is a few hundred bytecodes, and
        the two method calls a step (with their lookups of the run's deque,
        cursor and launcher) were a share of them worth saving; the DP
        lockstep, which acts between the steps, still makes the calls.
        ``tests/sim/test_stepped_run.py`` checks the loop against the calls,
        ``until`` falling inside a run, past it, and exactly at a step's end.
        """
        executor = self._executor
        pending, done = self.pending, self.done
        take, launch = self.cursor.take, self.launch_step
        j = len(done)
        ahead = self.run.depth - 1
        while True:
            step = pending.popleft()
            done.append(step)
            if step[0] > executor._clock:
                executor._clock = step[0]
            if not take(j, step[1], step[2]) or not executor._clock < until:
                return
            j += 1
            following = launch(j + ahead)
            if following is None:
                return
            pending.append(following)

    def result(self) -> RunResult:
        """The steps collected, for ``Scheduler.complete_run``; the steps launched after them go back in flight."""
        first = self.run.first_step_id
        in_flight = self._executor._in_flight
        for later, (end, tokens, proposals, seconds) in enumerate(self.pending, start=first + len(self.done)):
            in_flight.append(_InFlight(end, StepResult(later, tokens, proposals, None, seconds)))
        self.pending.clear()
        ends, sampled, drafts, elapsed = zip(*self.done, strict=True)
        return RunResult(first, list(sampled), list(drafts), list(elapsed), list(ends))
