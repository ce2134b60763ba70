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

import math
import random
from collections import deque
from collections.abc import Callable, Mapping

import attrs

from tokensched.errors import InvalidRequest, TokenschedError
from tokensched.plan import StepPlan, StepResult
from tokensched_sim.cost import BatchShape, CostModel, Deployment

OutputLengths = Mapping[str, int] | Callable[[str], int | None]
"""A request's target output length by id (EOS is forced at it); ``None`` or missing: no EOS."""

_NO_TARGET = 1 << 62


@attrs.define(slots=True)
class SimStats:
    """Running totals of what the simulated device did."""

    num_steps: int = 0
    busy_s: float = 0.0  # modelled seconds the device spent running steps
    num_tokens: int = 0  # query tokens computed
    num_sampled_tokens: int = 0
    num_drafts_verified: int = 0  # drafts scheduled for verification
    num_drafts_tested: int = 0  # drafts reached before the first rejection (each accepted with probability alpha)
    num_drafts_accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        """Accepted over tested drafts: the per-draft acceptance probability, alpha."""
        return self.num_drafts_accepted / self.num_drafts_tested if self.num_drafts_tested else 0.0


@attrs.frozen(slots=True)
class _InFlight:
    end: float
    result: StepResult


class SimExecutor:
    """An :class:`~tokensched.executor.Executor` whose device is a cost model on a virtual clock.

    >>> from tokensched_sim import Deployment, SimExecutor
    >>> ex = SimExecutor(Deployment(model="dense-8b", gpu="h100", tp=1), output_lengths={"a": 3})
    >>> ex.num_kv_blocks
    25650

    Args:
        deployment: model, GPU, TP degree and efficiencies (default: Kimi-K2.5-class on 4x B200).
        block_size: tokens per KV block; ``num_kv_blocks`` follows from memory left after weights.
        output_lengths: target output length per request id (mapping or callable); EOS is forced there.
        eos_token_id: the id emitted at the target length; random tokens are never this id.
        num_speculative_tokens: drafts proposed per request per step (0: no speculation; 3 is typical).
        acceptance_rate: probability each draft is accepted, given all earlier ones were.
        seed: seeds the one RNG behind every token and acceptance; same seed and plans, same results.
        num_kv_blocks: override the capacity computed from memory (e.g. a small pool for tests).
    """

    def __init__(
        self,
        deployment: Deployment | None = None,
        *,
        block_size: int = 16,
        output_lengths: OutputLengths | None = None,
        eos_token_id: int = 0,
        num_speculative_tokens: int = 0,
        acceptance_rate: float = 0.7,
        seed: int = 0,
        num_kv_blocks: int | None = None,
    ) -> None:
        self.deployment = deployment or Deployment()
        self.cost_model = CostModel(self.deployment)
        vocab = self.deployment.model.vocab_size
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if not 0 <= eos_token_id < vocab:
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary [0, {vocab})")
        if not 0.0 <= acceptance_rate <= 1.0:
            raise ValueError(f"acceptance_rate must be in [0, 1], got {acceptance_rate}")
        if num_speculative_tokens < 0:
            raise ValueError(f"num_speculative_tokens must be >= 0, got {num_speculative_tokens}")
        computed = self.cost_model.num_kv_blocks(block_size)
        if num_kv_blocks is not None and num_kv_blocks < 1:
            raise ValueError(f"num_kv_blocks must be >= 1, got {num_kv_blocks}")
        self._block_size = block_size
        self._num_kv_blocks = computed if num_kv_blocks is None else num_kv_blocks
        if self._num_kv_blocks < 1:
            raise ValueError(f"block_size {block_size} exceeds the {self.cost_model.num_kv_tokens}-token KV capacity")
        self.eos_token_id = eos_token_id
        self.num_speculative_tokens = num_speculative_tokens
        self.acceptance_rate = acceptance_rate
        self.stats = SimStats()
        self._lengths = output_lengths
        self._rng = random.Random(seed)
        self._vocab_minus_eos = vocab - 1
        self._uniform_logprob = -math.log(vocab - 1)
        # request id -> [outputs left until EOS, wants logprobs]
        self._requests: dict[str, list[int]] = {}
        self._clock = 0.0
        self._busy_until = 0.0
        self._in_flight: deque[_InFlight] = deque()

    # The Executor protocol -------------------------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self._block_size

    @property
    def num_kv_blocks(self) -> int:
        return self._num_kv_blocks

    def now(self) -> float:
        return self._clock

    def wait_until(self, t: float) -> None:
        if t > self._clock:
            self._clock = t

    def launch(self, plan: StepPlan) -> None:
        """Sample the step's tokens now (launch order fixes the RNG order) and queue its result."""
        self._admit(plan)
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

    # Internals --------------------------------------------------------------------------------------

    @property
    def num_steps_in_flight(self) -> int:
        return len(self._in_flight)

    def target_output_length(self, request_id: str) -> int | None:
        lengths = self._lengths
        if lengths is None:
            return None
        if callable(lengths):
            return lengths(request_id)
        return lengths.get(request_id)

    def _admit(self, plan: StepPlan) -> None:
        requests = self._requests
        for request_id in plan.removed_request_ids:
            requests.pop(request_id, None)
        for new in plan.new_requests:
            target = self.target_output_length(new.request_id)
            left = _NO_TARGET if target is None else target - new.num_output_tokens
            requests[new.request_id] = [left, int(new.sampling.logprobs)]

    def _run(self, plan: StepPlan) -> tuple[StepResult, float]:
        """One pass over the plan's columns: the batch's sums for the cost model, and its tokens."""
        requests = self._requests
        rand = self._rng.random
        span = self._vocab_minus_eos
        eos = self.eos_token_id
        alpha = self.acceptance_rate
        k = self.num_speculative_tokens
        stats = self.stats
        sampled: list[list[int]] = []
        proposals: list[list[int]] | None = [] if k else None
        wants_logprobs: list[int] = []
        pre_pairs = pre_kv = pre_ctx = dec_pairs = dec_kv = logits = 0
        proposing = proposing_kv = verified = tested = accepted_total = 0
        lo = plan.token_offsets[0]
        for request_id, c, hi, sample, drafts in zip(
            plan.request_ids,
            plan.num_computed_tokens,
            plan.token_offsets[1:],
            plan.sample,
            plan.draft_token_ids,
            strict=True,
        ):
            q = hi - lo
            lo = hi
            try:
                state = requests[request_id]
            except KeyError:
                raise InvalidRequest(f"step {plan.step_id}: request {request_id!r} was never sent in full") from None
            num_drafts = len(drafts)
            pairs = q * c + ((q * (q + 1)) >> 1)
            if q <= 1 + num_drafts:
                dec_pairs += pairs
                dec_kv += c + q
            else:
                pre_pairs += pairs
                pre_kv += c + q
                pre_ctx += c
            if not sample:
                sampled.append([])
                if proposals is not None:
                    proposals.append([])
                continue
            logits += 1 + num_drafts
            accepted = 0
            if num_drafts:
                verified += num_drafts
                while accepted < num_drafts and rand() < alpha:
                    accepted += 1
                accepted_total += accepted
                tested += accepted + (accepted < num_drafts)
            left = state[0]
            if accepted + 1 >= left:  # the target length is reached in this step: end with EOS
                tokens = [*drafts[: max(left - 1, 0)], eos]
                state[0] = 0
            else:
                token = int(rand() * span)
                tokens = [*drafts[:accepted], token + (token >= eos)]
                state[0] = left - accepted - 1
            sampled.append(tokens)
            if state[1]:
                wants_logprobs.append(len(sampled) - 1)
            if proposals is not None:
                if state[0]:
                    draft = [int(rand() * span) for _ in range(k)]
                    proposals.append([t + (t >= eos) for t in draft])
                    proposing += 1
                    proposing_kv += c + q
                else:
                    proposals.append([])
        shape = BatchShape(plan.num_tokens, logits, pre_pairs, pre_kv, pre_ctx, dec_pairs, dec_kv)
        duration = self.cost_model.step_time(shape)
        if proposing:
            duration += self.cost_model.draft_time(proposing, proposing_kv, k)
        stats.num_sampled_tokens += sum(map(len, sampled))
        stats.num_drafts_verified += verified
        stats.num_drafts_tested += tested
        stats.num_drafts_accepted += accepted_total
        result = StepResult(
            step_id=plan.step_id,
            sampled_token_ids=sampled,
            draft_token_ids=proposals,
            logprobs=self._logprobs(sampled, wants_logprobs) if wants_logprobs else None,
            elapsed=duration,
        )
        return result, duration

    def _logprobs(self, sampled: list[list[int]], indices: list[int]) -> list[list[float]]:
        """Log-probabilities under the simulator's own distribution: uniform ids, a forced EOS is certain."""
        out: list[list[float]] = [[] for _ in sampled]
        uniform, eos = self._uniform_logprob, self.eos_token_id
        for i in indices:
            out[i] = [0.0 if t == eos else uniform for t in sampled[i]]
        return out
