"""Drive the real Scheduler + Engine with a TorchExecutor and gather each request's tokens."""

from __future__ import annotations

import random
from collections.abc import Sequence

import attrs

from tokensched import Engine, RequestSpec
from tokensched.stats import SchedulerStats
from tokensched_torch import TorchExecutor


@attrs.define
class Run:
    tokens: dict[str, list[int]]
    logprobs: dict[str, list[float]]
    tokens_per_output: list[int]  # how many tokens each non-empty RequestOutput carried
    stats: SchedulerStats


def run_engine(executor: TorchExecutor, specs: Sequence[RequestSpec], **config: object) -> Run:
    """Submit ``specs`` and run the overlapped engine loop until idle, checking invariants every step."""
    engine = Engine.create(executor, None, **config)
    for spec in specs:
        engine.scheduler.submit(spec)
    tokens: dict[str, list[int]] = {s.request_id: [] for s in specs}
    logprobs: dict[str, list[float]] = {s.request_id: [] for s in specs}
    sizes: list[int] = []
    for outputs in engine.run():
        engine.scheduler.check_invariants()
        for out in outputs:
            tokens[out.request_id].extend(out.new_token_ids)
            if out.logprobs:
                logprobs[out.request_id].extend(out.logprobs)
            if out.new_token_ids:
                sizes.append(len(out.new_token_ids))
    return Run(tokens, logprobs, sizes, engine.scheduler.stats())


def random_prompt(rng: random.Random, n: int, vocab: int = 256) -> list[int]:
    return [rng.randrange(vocab) for _ in range(n)]


def repetitive_prompt(rng: random.Random, n: int, period: int = 5, vocab: int = 256) -> list[int]:
    """A prompt that repeats a short motif, so prompt-lookup drafts get accepted sometimes."""
    motif = random_prompt(rng, period, vocab)
    return [motif[i % period] for i in range(n)]
