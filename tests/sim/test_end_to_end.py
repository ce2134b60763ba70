"""Scheduler + Engine + SimExecutor together: requests end exactly where the workload says, in virtual time."""

from __future__ import annotations

import pytest

from tokensched import FinishReason, RequestOutput, RequestSpec
from tokensched.engine import Engine
from tokensched_sim import Deployment, SimExecutor

EOS = 0
LENGTHS = {"a": 1, "b": 7, "c": 40, "d": 120, "e": 3}
PROMPTS = {"a": 50, "b": 3000, "c": 20_000, "d": 700, "e": 9000}


def run(
    *,
    spec_tokens: int = 0,
    seed: int = 0,
    num_kv_blocks: int | None = None,
    max_batched_tokens: int = 4096,
    prefix_caching: bool = True,
) -> tuple[dict[str, list[int]], dict[str, RequestOutput], SimExecutor, Engine]:
    executor = SimExecutor(
        Deployment(model="kimi-k2.5", gpu="b200", tp=4),
        block_size=64,
        output_lengths=LENGTHS,
        eos_token_id=EOS,
        num_speculative_tokens=spec_tokens,
        seed=seed,
        num_kv_blocks=num_kv_blocks,
    )
    engine = Engine.create(
        executor,
        max_batched_tokens=max_batched_tokens,
        num_speculative_tokens=spec_tokens,
        max_steps_in_flight=2,
        enable_prefix_caching=prefix_caching,
    )
    for i, (rid, n) in enumerate(PROMPTS.items()):
        prompt = [100 + (i * 7919 + j) % 5000 for j in range(n)]
        engine.scheduler.submit(RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=500, eos_token_id=EOS))
    tokens: dict[str, list[int]] = {rid: [] for rid in PROMPTS}
    final: dict[str, RequestOutput] = {}
    for outputs in engine.run():
        for out in outputs:
            tokens[out.request_id] += out.new_token_ids
            if out.finished:
                final[out.request_id] = out
        engine.scheduler.check_invariants()
    return tokens, final, executor, engine


@pytest.mark.parametrize(
    ("spec_tokens", "prefix_caching"),
    [(0, True), (3, True), (3, False)],
)
def test_every_request_stops_on_eos_at_its_target_length(spec_tokens: int, prefix_caching: bool) -> None:
    tokens, final, executor, _ = run(spec_tokens=spec_tokens, prefix_caching=prefix_caching)
    for rid, n in LENGTHS.items():
        assert final[rid].finish_reason == FinishReason.STOP
        assert len(tokens[rid]) == n and tokens[rid][-1] == EOS and EOS not in tokens[rid][:-1]
    # Virtual time: the device was busy for every modelled step and the clock never ran behind it.
    assert executor.stats.num_steps > 0
    assert executor.now() >= executor.stats.busy_s > 0
    if spec_tokens:
        assert executor.stats.num_drafts_accepted > 0


def test_chunked_long_prompt_costs_more_than_a_short_one() -> None:
    _, _, executor, _ = run()
    # 20k-token prompt in 4096-token chunks: at least five prefill steps before c's first token.
    assert executor.stats.num_steps >= 5 + max(LENGTHS.values()) - 1
    assert executor.stats.num_tokens >= sum(PROMPTS.values()) + sum(LENGTHS.values()) - len(LENGTHS)


def test_the_whole_run_is_reproducible_from_its_seed() -> None:
    first_tokens, _, first, _ = run(spec_tokens=3, seed=5)
    again_tokens, _, again, _ = run(spec_tokens=3, seed=5)
    assert first_tokens == again_tokens
    assert first.now() == again.now()
    other_tokens, _, _, _ = run(spec_tokens=3, seed=6)
    assert other_tokens != first_tokens


def test_a_small_pool_preempts_and_still_ends_each_request_at_its_target() -> None:
    # 420 blocks of 64 tokens hold the 20k-token prompt but not everything at once.
    tokens, final, _, engine = run(num_kv_blocks=420)
    for rid, n in LENGTHS.items():
        assert final[rid].finish_reason == FinishReason.STOP and len(tokens[rid]) == n
    assert engine.scheduler.stats().num_finished == len(LENGTHS)


def test_a_prefix_cache_hit_shortens_the_modelled_prefill() -> None:
    executor = SimExecutor(Deployment(model="dense-8b", gpu="h100", tp=1), block_size=16, output_lengths={"a": 1})
    engine = Engine.create(executor, max_batched_tokens=16_384)
    shared = [5 + j % 1000 for j in range(8192)]

    def first_step_seconds(rid: str, prompt: list[int]) -> float:
        start = executor.now()
        engine.scheduler.submit(RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=1, eos_token_id=EOS))
        list(engine.run())
        return executor.now() - start

    cold = first_step_seconds("a", [*shared, 1, 2, 3])
    warm = first_step_seconds("b", [*shared, 4, 5, 6])
    assert engine.scheduler.stats().prefix_hit_tokens >= 8192 - 16
    # The warm prefill computes a few dozen tokens over an 8k cached prefix: weights-bound, milliseconds.
    assert warm < cold / 5
