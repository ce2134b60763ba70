"""The simulator's tokens: seeded random ids, EOS forced at each request's target length, speculative acceptance.

Random ids are drawn uniformly from the vocabulary without the EOS id, so a
request ends exactly where the workload says (or at ``max_tokens`` when it has
no target). Drafts are random non-EOS ids too; verifying ``d`` drafts accepts
each with probability ``alpha`` until the first rejection and then adds one
bonus token, so a verification yields ``1 + alpha + ... + alpha^d`` tokens on
average. Every draw comes from one ``random.Random(seed)`` in plan order, so
the same seed and the same plans give the same tokens.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import islice

import attrs

from tokensched.errors import InvalidRequest
from tokensched.plan import StepPlan
from tokensched_sim.shape import BatchShape

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


RunStep = tuple[list[list[int]], list[list[int]] | None, int, int, int, int, int]
"""A run step's ``(tokens, proposals, num_proposing, proposing_kv_tokens, num_tokens, pairs, kv_tokens)``:
:class:`Sampled`'s fields, then the step's query tokens, query-key pairs and KV tokens read, the sums
:meth:`BatchShape.decodes <tokensched_sim.shape.BatchShape.decodes>` takes (a plain tuple: one a step)."""

RunSampler = Callable[[list[int], Sequence[Sequence[int]], list[int]], RunStep]
"""``sample(rows, drafts, pos)``: one step of a run's rows (:meth:`TokenSource.run_sampler`)."""


@attrs.frozen(slots=True)
class Sampled:
    """One step's tokens, in plan order, and what the cost model needs to know about them."""

    tokens: list[list[int]]
    drafts: list[list[int]] | None
    logprobs: list[list[float]] | None
    num_proposing: int  # requests that got drafts proposed (the draft head ran for them)
    proposing_kv_tokens: int  # their context after this step


class TokenSource:
    """Per-request targets and the RNG; ``admit`` each plan, then ``sample`` it."""

    def __init__(
        self,
        *,
        vocab_size: int,
        eos_token_id: int,
        output_lengths: OutputLengths | None,
        num_speculative_tokens: int,
        acceptance_rate: float,
        seed: int,
        stats: SimStats,
    ) -> None:
        if not 0 <= eos_token_id < vocab_size:
            raise ValueError(f"eos_token_id {eos_token_id} is outside the vocabulary [0, {vocab_size})")
        if not 0.0 <= acceptance_rate <= 1.0:
            raise ValueError(f"acceptance_rate must be in [0, 1], got {acceptance_rate}")
        if num_speculative_tokens < 0:
            raise ValueError(f"num_speculative_tokens must be >= 0, got {num_speculative_tokens}")
        self.eos_token_id = eos_token_id
        self.num_speculative_tokens = num_speculative_tokens
        self.acceptance_rate = acceptance_rate
        self.stats = stats
        self._lengths = output_lengths
        self._rng = random.Random(seed)
        self._span = vocab_size - 1  # ids other than EOS
        self._uniform_logprob = -math.log(vocab_size - 1)
        self._left: dict[str, int] = {}  # request id -> outputs until EOS
        self._logprobs: set[str] = set()  # requests that asked for logprobs

    def target_output_length(self, request_id: str) -> int | None:
        lengths = self._lengths
        if lengths is None:
            return None
        if callable(lengths):
            return lengths(request_id)
        return lengths.get(request_id)

    def admit(self, plan: StepPlan) -> None:
        """Forget removed requests, then start new (or resumed) ones from the outputs they already have."""
        self.forget(plan.removed_request_ids)
        left, logprobs = self._left, self._logprobs
        for new in plan.new_requests:
            target = self.target_output_length(new.request_id)
            left[new.request_id] = _NO_TARGET if target is None else target - new.num_output_tokens
            if new.sampling.logprobs:
                logprobs.add(new.request_id)
            else:
                logprobs.discard(new.request_id)

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop requests that left the running set (a plan's or a run's ``removed_request_ids``)."""
        left, logprobs = self._left, self._logprobs
        for request_id in request_ids:
            left.pop(request_id, None)
            logprobs.discard(request_id)

    def sample(self, plan: StepPlan) -> Sampled:
        """Tokens (and drafts, and logprobs where asked) for every request in ``plan``."""
        try:
            if self.num_speculative_tokens or any(plan.draft_token_ids):
                offsets, computed = plan.token_offsets, plan.num_computed_tokens
                kv_after = [computed[i] + offsets[i + 1] - offsets[i] for i in range(len(computed))]
                sampled = self._sample_speculative(plan.request_ids, plan.sample, plan.draft_token_ids, kv_after)
            else:
                sampled = self._sample_plain(plan.request_ids, plan.sample)
        except KeyError as exc:
            raise InvalidRequest(f"step {plan.step_id}: request {exc.args[0]!r} was never sent in full") from None
        if self._logprobs:
            logprobs = self._logprobs_of(plan, sampled.tokens)
            if logprobs is not None:
                sampled = attrs.evolve(sampled, logprobs=logprobs)
        self.stats.num_sampled_tokens += sum(map(len, sampled.tokens))
        return sampled

    def sample_step(self, plan: StepPlan) -> tuple[Sampled, BatchShape]:
        """:meth:`sample` of ``plan`` and its :meth:`BatchShape.from_plan`, with speculation in one walk over the rows.

        The same draws in the same order as ``sample`` (each sampling row's
        acceptances and token, then every proposing row's drafts), the same
        counters and the same shape, to the bit (``tests/sim/test_step_sampling.py``).
        Why: a single step of a few speculative decodes beside a prefill chunk
        (the DP-attention ranks' every step) walked its rows three times
        (context lengths, draws, shape) and built a list per walk; here the
        draws and the shape's sums share one loop. Without speculation, or
        with a request that wants logprobs, it is ``sample`` then ``from_plan``.
        """
        if not self.num_speculative_tokens or self._logprobs:
            return self.sample(plan), BatchShape.from_plan(plan)
        left = self._left
        rand = self._rng.random
        span, eos, alpha = self._span, self.eos_token_id, self.acceptance_rate
        request_ids, computed, offsets = plan.request_ids, plan.num_computed_tokens, plan.token_offsets
        out: list[list[int]] = []
        append = out.append
        proposing: list[int] = []  # indices of requests that get drafts
        proposing_kv = verified = tested = accepted_total = emitted = 0
        logits = sum_qc = sum_qq = 0
        pre_pairs = pre_kv = pre_ctx = pre_q = pre_n = pre_logits = 0
        lo = offsets[0]
        i = -1
        try:
            for request_id, c, drafts, sample, hi in zip(
                request_ids, computed, plan.draft_token_ids, plan.sample, islice(offsets, 1, None), strict=True
            ):
                i += 1
                q = hi - lo
                lo = hi
                d = len(drafts)
                sum_qc += q * c
                sum_qq += q * q
                if q > d + 1:  # a prefill chunk (a decode computes one token and its drafts)
                    pre_pairs += q * c + q * (q + 1) // 2
                    pre_kv += c + q
                    pre_ctx += c
                    pre_q += q
                    pre_n += 1
                    if sample:
                        pre_logits += 1 + d
                n = left[request_id]
                if not sample:
                    append([])
                    continue
                logits += 1 + d
                accepted = 0
                if d:
                    while accepted < d and rand() < alpha:
                        accepted += 1
                    verified += d
                    tested += accepted + (accepted < d)
                    accepted_total += accepted
                if accepted + 1 >= n:  # the target length falls in this step: end there with EOS
                    tokens = [*drafts[: n - 1], eos] if n > 1 else [eos]
                    emitted += len(tokens)
                    append(tokens)
                    left[request_id] = 0
                    continue
                t = int(rand() * span)
                append([*drafts[:accepted], t + (t >= eos)] if accepted else [t + (t >= eos)])
                emitted += accepted + 1
                left[request_id] = n = n - accepted - 1
                proposing.append(i)
                proposing_kv += c + q
        except KeyError as exc:
            raise InvalidRequest(f"step {plan.step_id}: request {exc.args[0]!r} was never sent in full") from None
        stats = self.stats
        stats.num_drafts_verified += verified
        stats.num_drafts_tested += tested
        stats.num_drafts_accepted += accepted_total
        stats.num_sampled_tokens += emitted
        proposals = self._draw_proposals(len(out), proposing)
        sampled = Sampled(out, proposals, None, len(proposing), proposing_kv)
        n, t = len(computed), plan.num_tokens
        sum_c = sum(computed)
        if t == n:  # one token each: every request is a decode (BatchShape.from_plan's first case)
            return sampled, BatchShape(t, logits, 0, 0, 0, sum_c + t, sum_c + t, n)
        pairs = sum_qc + (sum_qq + t) // 2
        shape = BatchShape(
            t, logits, pre_pairs, pre_kv, pre_ctx, pairs - pre_pairs, sum_c + t - pre_kv, n, pre_q, pre_n, pre_logits
        )
        return sampled, shape

    def sample_decodes(self, request_ids: list[str], drafts: Sequence[Sequence[int]], kv_after: list[int]) -> Sampled:
        """One decode step of a multi-step run: the same draws as :meth:`sample` of the equivalent plan.

        ``drafts[i]`` are the drafts row ``i`` verifies and ``kv_after[i]`` its
        context after the step. The run has no logprobs requests (the
        scheduler offers runs only without them). Built on the single-step
        samplers, it is the reference :meth:`sample_run_step` (what the
        executor calls) is tested against.
        """
        try:
            samples = [True] * len(request_ids)
            if self.num_speculative_tokens or any(drafts):
                sampled = self._sample_speculative(request_ids, samples, drafts, kv_after)
            else:
                sampled = self._sample_plain(request_ids, samples)
        except KeyError as exc:
            raise InvalidRequest(f"request {exc.args[0]!r} was never sent in full") from None
        self.stats.num_sampled_tokens += sum(map(len, sampled.tokens))
        return sampled

    def sample_run_step(
        self, request_ids: list[str], rows: list[int], drafts: Sequence[Sequence[int]], pos: list[int]
    ) -> RunStep:
        """:meth:`sample_decodes` for the rows ``rows`` of a run (``request_ids[i]``, context ``pos[i]``).

        The same draws, in the same order, as ``sample_decodes`` of the step
        (``tests/sim/test_run_sampling.py`` checks it), and, on the same walk
        over the rows, the sums the cost model prices the step from (see
        :data:`RunStep`). One step through :meth:`run_sampler`, which a run
        binds once for all its steps.
        """
        return self.run_sampler(request_ids)(rows, drafts, pos)

    def run_sampler(self, request_ids: list[str]) -> RunSampler:
        """``sample(rows, drafts, pos)``: :meth:`sample_run_step` of ``request_ids``, bound once for a run.

        Why: a run samples a step of one or two rows tens of thousands of
        times per simulated hour, so the work around the draws, not the
        draws, is the cost: here what stays fixed for the run (the RNG, the
        vocabulary, the counters, the targets left) is looked up once, not
        every step, and a step's drafts are proposed in the same call (what
        :meth:`_draw_proposals` does for single steps: after every row's
        acceptances and token, row after row). Without the per-step lists and
        objects that need not exist; without speculation and drafts it is
        :meth:`_sample_plain`'s rule (a row with no drafts accepts nothing and
        draws one token). The sampler reads the targets and counters as they
        are at each call (single steps between two runs move them).
        """
        left = self._left
        rand = self._rng.random
        span, eos, alpha, k = self._span, self.eos_token_id, self.acceptance_rate, self.num_speculative_tokens
        ks = range(k)
        stats = self.stats

        def sample(rows: list[int], drafts: Sequence[Sequence[int]], pos: list[int]) -> RunStep:
            out: list[list[int]] = []
            proposing: list[int] = []  # positions in ``rows`` of the rows that get drafts
            proposing_kv = verified = tested = accepted_total = emitted = 0
            num_tokens = pairs = kv_tokens = 0
            r = 0
            try:
                for i in rows:
                    request_id = request_ids[i]
                    n = left[request_id]
                    step = drafts[r]
                    d = len(step)
                    c, q = pos[i], 1 + d  # q tokens after c of context: q*c + q*(q+1)/2 pairs, c + q tokens read
                    num_tokens += q
                    pairs += q * c + q * (q + 1) // 2
                    kv_tokens += c + q
                    if d:
                        accepted = 0
                        while accepted < d and rand() < alpha:
                            accepted += 1
                        verified += d
                        tested += accepted + (accepted < d)
                        accepted_total += accepted
                        if accepted + 1 >= n:  # the target length falls in this step: end there with EOS
                            tokens = [*step[: n - 1], eos] if n > 1 else [eos]
                            n = 0
                        else:
                            t = int(rand() * span)
                            tokens = [*step[:accepted], t + (t >= eos)] if accepted else [t + (t >= eos)]
                            n -= accepted + 1
                    elif n > 1:
                        t = int(rand() * span)
                        tokens = [t + (t >= eos)]
                        n -= 1
                    else:  # the target length is this token: EOS
                        tokens = [eos]
                        n = 0
                    emitted += len(tokens)
                    out.append(tokens)
                    left[request_id] = n
                    if n:
                        proposing.append(r)
                        proposing_kv += c + q
                    r += 1
            except KeyError as exc:
                raise InvalidRequest(f"request {exc.args[0]!r} was never sent in full") from None
            stats.num_sampled_tokens += emitted
            if verified:
                stats.num_drafts_verified += verified
                stats.num_drafts_tested += tested
                stats.num_drafts_accepted += accepted_total
            if not k:
                return out, None, 0, 0, num_tokens, pairs, kv_tokens
            # _draw_proposals(len(out), proposing), inline: k drafts for each proposing row, row after row
            if len(proposing) == r:
                proposals: list[list[int]] = []
                for _ in proposing:
                    row: list[int] = []
                    for _ in ks:
                        t = int(rand() * span)
                        row.append(t + (t >= eos))
                    proposals.append(row)
            else:
                proposals = []
                for _ in out:
                    proposals.append([])
                for p in proposing:
                    row = proposals[p]
                    for _ in ks:
                        t = int(rand() * span)
                        row.append(t + (t >= eos))
            return out, proposals, len(proposing), proposing_kv, num_tokens, pairs, kv_tokens

        return sample

    def _sample_plain(self, request_ids: list[str], samples: Iterable[bool]) -> Sampled:
        """The hot path: one token per sampling request, no drafts."""
        left = self._left
        rand = self._rng.random
        span, eos = self._span, self.eos_token_id
        out: list[list[int]] = []
        append = out.append
        for request_id, sample in zip(request_ids, samples, strict=True):
            n = left[request_id]
            if not sample:
                append([])
            elif n > 1:
                left[request_id] = n - 1
                t = int(rand() * span)
                append([t + (t >= eos)])
            else:
                left[request_id] = 0
                append([eos])
        return Sampled(out, None, None, 0, 0)

    def _sample_speculative(
        self,
        request_ids: list[str],
        samples: Iterable[bool],
        plan_drafts: Sequence[Sequence[int]],
        kv_after: list[int],
    ) -> Sampled:
        """Verify the plan's drafts, then propose ``num_speculative_tokens`` new ones per sampling request."""
        left = self._left
        rand = self._rng.random
        span, eos, alpha, k = self._span, self.eos_token_id, self.acceptance_rate, self.num_speculative_tokens
        out: list[list[int]] = []
        proposing: list[int] = []  # indices of requests that get drafts
        verified = tested = accepted_total = 0
        for i, (request_id, sample, drafts) in enumerate(zip(request_ids, samples, plan_drafts, strict=True)):
            n = left[request_id]
            if not sample:
                out.append([])
                continue
            d = len(drafts)
            accepted = 0
            if d:
                while accepted < d and rand() < alpha:
                    accepted += 1
                verified += d
                tested += accepted + (accepted < d)
                accepted_total += accepted
            if accepted + 1 >= n:  # the target length falls in this step: end there with EOS
                out.append([*drafts[: max(n - 1, 0)], eos])
                n = 0
            else:
                t = int(rand() * span)
                out.append([*drafts[:accepted], t + (t >= eos)])
                n -= accepted + 1
            left[request_id] = n
            if n:
                proposing.append(i)
        stats = self.stats
        stats.num_drafts_verified += verified
        stats.num_drafts_tested += tested
        stats.num_drafts_accepted += accepted_total
        if not k:
            return Sampled(out, None, None, 0, 0)
        proposals = self._draw_proposals(len(out), proposing)
        return Sampled(out, proposals, None, len(proposing), sum(kv_after[i] for i in proposing))

    def _draw_proposals(self, num_rows: int, proposing: list[int]) -> list[list[int]]:
        """``num_speculative_tokens`` drafts for each row in ``proposing`` (others get none), row after row.

        Drawn after every row's acceptance and token, the order single steps
        draw them in, shared by :meth:`_sample_speculative` and :meth:`sample_step`
        (:meth:`run_sampler` draws them inline, the same way). Plain loops, not a comprehension: in 3.11 a
        comprehension is a function call, and a step has a handful of rows.
        """
        k, span, eos, rand = self.num_speculative_tokens, self._span, self.eos_token_id, self._rng.random
        ks = range(k)
        every_row = len(proposing) == num_rows
        proposals: list[list[int]] = [] if every_row else [[] for _ in range(num_rows)]
        for i in proposing:
            row: list[int] = []
            for _ in ks:
                t = int(rand() * span)
                row.append(t + (t >= eos))
            if every_row:
                proposals.append(row)
            else:
                proposals[i] = row
        return proposals

    def _logprobs_of(self, plan: StepPlan, tokens: list[list[int]]) -> list[list[float]] | None:
        """Log-probabilities under the simulator's own distribution: uniform ids; a forced EOS is certain."""
        wanted = self._logprobs
        if not any(request_id in wanted for request_id in plan.request_ids):
            return None
        uniform, eos = self._uniform_logprob, self.eos_token_id
        return [
            [0.0 if t == eos else uniform for t in toks] if request_id in wanted else []
            for request_id, toks in zip(plan.request_ids, tokens, strict=True)
        ]
