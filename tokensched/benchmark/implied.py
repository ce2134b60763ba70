"""What a published p50 TTFT implies about prefix reuse, under the simulator's cost model.

The reproduction's gap (``--reproduce coding-agent-b200``) is that in the
simulation ~96% of prompt tokens hit the prefix cache, so a turn's TTFT is one
short prefill. This module asks the converse question: *which uncached share of
each prompt would make the cost model produce the published p50 TTFT?* It is a
back-of-envelope, independent of the scheduler, so that its answer does not
inherit the simulation's own assumptions about reuse:

- turns arrive as a Poisson stream whose prompt tokens add up to the offered TPM;
  prompts are uniform over the published ~45k-200k range;
- a fraction ``u`` of each prompt is not cached and must be prefilled after the
  cached ``(1 - u)`` share, in chunks of the engine's per-step token budget, each
  chunk priced by :meth:`CostModel.step_time` (its prefix makes later chunks dearer);
- prefills are served one at a time in arrival order (FCFS, one server; decodes,
  which would only add to the wait, are left out), so the wait follows Lindley's
  recursion ``W[n+1] = max(0, W[n] + S[n] - A[n+1])``, and TTFT = wait + prefill.

The median TTFT grows with ``u`` (more to prefill, and more queueing), so the
``u`` that gives a published p50 is found by bisection. ``u`` is reported with
the new tokens per turn it means (``u`` x the mean prompt) and the prefill
utilisation it puts on the deployment. Nothing here is fitted: it reads the
published figure through the model, as a diagnosis.

Run ``python -m tokensched.benchmark.implied`` for the table in docs/sim.md.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import attrs

PROMPT_RANGE = (45_000, 200_000)  # the published prompt range
_GRID = 1_000  # prompts are priced on a grid of this many tokens (the step costs are smooth in length)


@attrs.frozen(slots=True)
class Implied:
    """The uncached share of a prompt that reproduces a target p50 TTFT, and what it means."""

    target_ttft_s: float
    uncached_fraction: float | None  # None: no share in [0, 1] reaches the target (see ``ttft_at_full``)
    new_tokens_per_turn: float | None
    utilisation: float | None  # prefill busy fraction at that share
    ttft_at_zero: float  # p50 when every prompt token but none is cached (u = 0: only queueing of empty prefills)
    ttft_at_full: float  # p50 with nothing cached (u = 1); inf when the queue is unstable
    max_stable_fraction: float  # the share at which prefill alone fills the deployment (utilisation 1)


class PrefillClock:
    """Prefill time of ``q`` uncached tokens after ``c`` cached ones, chunked by the engine's budget."""

    def __init__(self, cost_model: Any, chunk_tokens: int) -> None:
        if chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
        self._cost = cost_model
        self._chunk = chunk_tokens
        self._shape = _shape_factory()
        self._memo: dict[tuple[int, int], float] = {}

    def time(self, new_tokens: int, cached_tokens: int) -> float:
        """Seconds to prefill ``new_tokens`` after ``cached_tokens`` (0 for nothing to prefill)."""
        key = (round(new_tokens / _GRID), round(cached_tokens / _GRID))
        hit = self._memo.get(key)
        if hit is not None:
            return hit
        q_total, c = key[0] * _GRID, key[1] * _GRID
        total = 0.0
        done = 0
        while done < q_total:
            q = min(self._chunk, q_total - done)
            shape = self._shape(num_prefill_tokens=q, num_prefill_requests=1, prefill_context_tokens=c + done)
            total += self._cost.step_time(shape)
            done += q
        self._memo[key] = total
        return total


def _shape_factory() -> Any:
    from tokensched.executor import executor_package

    return executor_package("sim").BatchShape.from_counts


@attrs.frozen(slots=True)
class _Stream:
    gaps: tuple[float, ...]
    prompts: tuple[int, ...]


def _stream(tpm: float, num_requests: int, seed: int) -> _Stream:
    rng = random.Random(seed)
    low, high = PROMPT_RANGE
    prompts = tuple(rng.randint(low, high) for _ in range(num_requests))
    rate = tpm / 60 / ((low + high) / 2)  # requests per second
    gaps = tuple(rng.expovariate(rate) for _ in range(num_requests))
    return _Stream(gaps, prompts)


def p50_ttft(clock: PrefillClock, stream: _Stream, uncached_fraction: float) -> float:
    """The median of wait + prefill over the stream at uncached share ``u`` (FCFS, one server)."""
    wait = 0.0
    ttfts: list[float] = []
    previous = 0.0
    for gap, prompt in zip(stream.gaps, stream.prompts, strict=True):
        wait = max(0.0, wait + previous - gap)
        new = round(prompt * uncached_fraction)
        service = clock.time(new, prompt - new)
        ttfts.append(wait + service)
        previous = service
    ttfts.sort()
    return ttfts[len(ttfts) // 2]


def utilisation(clock: PrefillClock, stream: _Stream, uncached_fraction: float) -> float:
    """Prefill busy time over the stream's span at share ``u`` (>= 1: the queue cannot be stable)."""
    busy = sum(clock.time(round(p * uncached_fraction), p - round(p * uncached_fraction)) for p in stream.prompts)
    return busy / sum(stream.gaps)


def implied_fraction(
    clock: PrefillClock, tpm: float, target_ttft_s: float, *, num_requests: int = 4_000, seed: int = 0
) -> Implied:
    """The uncached share ``u`` whose p50 TTFT is ``target_ttft_s`` at ``tpm`` offered (bisection on ``u``)."""
    if target_ttft_s <= 0 or tpm <= 0:
        raise ValueError(f"target_ttft_s and tpm must be positive, got {target_ttft_s} and {tpm}")
    stream = _stream(tpm, num_requests, seed)
    lo, hi = 0.0, 1.0
    while hi - lo > 1e-3:  # the share where utilisation reaches 1
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if utilisation(clock, stream, mid) < 1.0 else (lo, mid)
    max_stable = lo
    at_zero = p50_ttft(clock, stream, 0.0)
    at_full = p50_ttft(clock, stream, 1.0) if max_stable >= 1.0 - 1e-3 else math.inf
    if target_ttft_s < at_zero:
        return Implied(target_ttft_s, None, None, None, at_zero, at_full, max_stable)
    lo, hi = 0.0, max_stable
    if p50_ttft(clock, stream, hi) < target_ttft_s:
        # even at the edge of stability the median is below the target: only an unstable queue reaches it
        return Implied(target_ttft_s, None, None, None, at_zero, at_full, max_stable)
    while hi - lo > 1e-4:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if p50_ttft(clock, stream, mid) < target_ttft_s else (lo, mid)
    u = (lo + hi) / 2
    mean_prompt = sum(PROMPT_RANGE) / 2
    return Implied(target_ttft_s, u, u * mean_prompt, utilisation(clock, stream, u), at_zero, at_full, max_stable)


def clock_for(policy: str, **bench: Any) -> PrefillClock:
    """The prefill clock of a benchmark profile's deployment (its engine, TP and per-step token budget)."""
    from tokensched.benchmark.config import BenchConfig
    from tokensched.benchmark.profiles import PROFILES
    from tokensched.benchmark.run import make_deployment
    from tokensched.executor import executor_package

    config = BenchConfig(policy=policy, **bench)
    chunk = int(PROFILES[policy].settings.get("max_batched_tokens", 8192))
    return PrefillClock(executor_package("sim").CostModel(make_deployment(config)), chunk)


def main(argv: Sequence[str] | None = None) -> None:
    """Print the implied uncached share for each published p50 TTFT at 2.5M TPM (the table in docs/sim.md)."""
    del argv
    for policy, published in (("trtllm-latency", 1.1), ("sglang-tp8", 5.1)):
        clock = clock_for(policy)
        result = implied_fraction(clock, 2.5e6, published)
        u = "-" if result.uncached_fraction is None else f"{result.uncached_fraction:.3f}"
        new = "-" if result.new_tokens_per_turn is None else f"{result.new_tokens_per_turn:,.0f}"
        util = "-" if result.utilisation is None else f"{result.utilisation:.2f}"
        print(
            f"{policy:>11}: published p50 {published:.2f} s -> uncached share {u} ({new} new tokens a turn, "
            f"prefill utilisation {util}); p50 at u=0: {result.ttft_at_zero:.2f} s, at u=1: "
            f"{result.ttft_at_full:.2f} s; prefill saturates at u={result.max_stable_fraction:.3f}"
        )


if __name__ == "__main__":
    main()
