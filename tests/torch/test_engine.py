"""End to end: the real Scheduler and Engine with the torch executor on a tiny float64 model.

Every greedy run is checked token for token against plain greedy decoding with
the dense reference forward, so chunking, prefix hits, preemption, overlap and
speculation can only pass if they change nothing.
"""

from __future__ import annotations

import random

import pytest

torch = pytest.importorskip("torch")

from tests.torch.engine_helpers import random_prompt, repetitive_prompt, run_engine  # noqa: E402
from tokensched import Engine, RequestSpec, SamplingParams, load_executor  # noqa: E402
from tokensched_torch import ModelDrafter, TorchExecutor, dense_reference_logits, greedy_reference  # noqa: E402
from tokensched_torch.model import MLAModel  # noqa: E402


def executor(model: MLAModel, num_blocks: int = 64, block_size: int = 4, **kwargs: object) -> TorchExecutor:
    return TorchExecutor(model=model, num_blocks=num_blocks, block_size=block_size, dtype=torch.float64, **kwargs)  # type: ignore[arg-type]


def specs(rng: random.Random, lengths: list[int], max_tokens: int = 8, **kwargs: object) -> list[RequestSpec]:
    return [
        RequestSpec(request_id=f"r{i}", prompt_token_ids=random_prompt(rng, n), max_tokens=max_tokens, **kwargs)  # type: ignore[arg-type]
        for i, n in enumerate(lengths)
    ]


def assert_greedy(model: MLAModel, requests: list[RequestSpec], tokens: dict[str, list[int]]) -> None:
    for spec in requests:
        assert tokens[spec.request_id] == greedy_reference(model, spec.prompt_token_ids, spec.max_tokens), (
            spec.request_id
        )


@pytest.mark.parametrize("background", [False, True], ids=["sync", "background"])
def test_chunked_prefill_mixed_batches_and_two_steps_in_flight(model: MLAModel, background: bool) -> None:
    requests = specs(random.Random(0), [3, 17, 30, 9, 1])
    with executor(model, background=background) as ex:
        run = run_engine(ex, requests, max_batched_tokens=12, max_steps_in_flight=2)
    assert_greedy(model, requests, run.tokens)


def test_prefix_shared_between_requests_and_session_turns(model: MLAModel) -> None:
    rng = random.Random(1)
    system = random_prompt(rng, 16)
    agents = [
        RequestSpec(request_id=f"a{i}", prompt_token_ids=[*system, *random_prompt(rng, 3 + i)], max_tokens=5)
        for i in range(3)
    ]
    turn1 = RequestSpec(request_id="s1", session_id="s", prompt_token_ids=random_prompt(rng, 13), max_tokens=6)
    engine = Engine.create(executor(model), max_steps_in_flight=2)
    outputs: dict[str, list[int]] = {}

    def serve(*requests: RequestSpec) -> int:
        """Run ``requests`` to completion; the prefix-hit tokens their admissions found."""
        before = engine.scheduler.stats().prefix_hit_tokens
        for spec in requests:
            engine.scheduler.submit(spec)
        for batch in engine.run():
            engine.scheduler.check_invariants()
            for out in batch:
                outputs.setdefault(out.request_id, []).extend(out.new_token_ids)
        return engine.scheduler.stats().prefix_hit_tokens - before

    serve(agents[0], turn1)
    assert serve(*agents[1:]) >= 2 * 16  # both found the system prompt's four blocks
    turn2 = RequestSpec(
        request_id="s2",
        session_id="s",
        prompt_token_ids=[*turn1.prompt_token_ids, *outputs["s1"], *random_prompt(rng, 5)],
        max_tokens=6,
    )
    assert serve(turn2) >= 16  # turn 2 found turn 1's prompt and output blocks
    assert_greedy(model, [*agents, turn1, turn2], outputs)


def test_preemption_with_a_tiny_pool_recomputes_exactly(model: MLAModel) -> None:
    requests = specs(random.Random(2), [10, 7, 12, 5], max_tokens=10)
    run = run_engine(executor(model, num_blocks=12), requests, max_steps_in_flight=2)
    assert run.stats.num_preemptions > 0
    assert_greedy(model, requests, run.tokens)


@pytest.mark.parametrize("in_flight", [1, 2])
def test_speculative_greedy_equals_plain_greedy(model: MLAModel, in_flight: int) -> None:
    rng = random.Random(3)
    requests = [
        RequestSpec(request_id=f"r{i}", prompt_token_ids=repetitive_prompt(rng, 12 + 3 * i), max_tokens=16)
        for i in range(4)
    ]
    plain = run_engine(executor(model), requests, max_steps_in_flight=in_flight, enable_prefix_caching=False)
    spec = run_engine(
        executor(model, num_speculative_tokens=3),
        requests,
        num_speculative_tokens=3,
        max_steps_in_flight=in_flight,
        enable_prefix_caching=False,
    )
    assert spec.tokens == plain.tokens
    assert_greedy(model, requests, spec.tokens)
    assert max(spec.tokens_per_output) > 1  # some drafts were accepted


def test_draft_model_equal_to_target_gets_every_draft_accepted(model: MLAModel) -> None:
    requests = specs(random.Random(4), [6, 9], max_tokens=9)
    ex = executor(model, num_speculative_tokens=2, drafter=ModelDrafter(model))
    run = run_engine(ex, requests, num_speculative_tokens=2, max_steps_in_flight=1, enable_prefix_caching=False)
    assert_greedy(model, requests, run.tokens)
    # After the first token, every verification step accepts both drafts and adds a bonus token.
    assert run.tokens_per_output.count(3) >= 4


def test_seeded_sampling_is_reproducible_across_batching_chunking_and_preemption(model: MLAModel) -> None:
    rng = random.Random(5)
    sampling = SamplingParams(temperature=1.0, top_p=0.9, seed=1234)
    target = RequestSpec(request_id="t", prompt_token_ids=random_prompt(rng, 11), max_tokens=12, sampling=sampling)
    alone = run_engine(executor(model), [target])
    crowd = [target, *specs(rng, [9, 14, 6], max_tokens=12, sampling=SamplingParams(temperature=0.8))]
    crowded = run_engine(executor(model, num_blocks=14), crowd, max_batched_tokens=7, max_steps_in_flight=2)
    assert crowded.stats.num_preemptions > 0
    assert crowded.tokens["t"] == alone.tokens["t"]
    reseeded = target.model_copy(update={"sampling": SamplingParams(temperature=1.0, top_p=0.9, seed=99)})
    assert run_engine(executor(model), [reseeded]).tokens["t"] != alone.tokens["t"]


def test_logprobs_are_the_models_log_softmax_at_each_sampled_token(model: MLAModel) -> None:
    rng = random.Random(6)
    with_lp = RequestSpec(
        request_id="lp", prompt_token_ids=random_prompt(rng, 7), max_tokens=5, sampling=SamplingParams(logprobs=True)
    )
    without = RequestSpec(request_id="no", prompt_token_ids=random_prompt(rng, 5), max_tokens=5)
    run = run_engine(executor(model), [with_lp, without], max_steps_in_flight=2)
    history = [*with_lp.prompt_token_ids, *run.tokens["lp"]]
    reference = dense_reference_logits(model, history).log_softmax(dim=-1)
    expected = [float(reference[7 - 1 + j, tok]) for j, tok in enumerate(run.tokens["lp"])]
    assert run.logprobs["lp"] == pytest.approx(expected, abs=1e-9)
    assert run.logprobs["no"] == []


def test_registered_as_the_torch_entry_point() -> None:
    assert load_executor("torch") is TorchExecutor


def test_speculative_sampling_is_deterministic_for_a_given_workload(model: MLAModel) -> None:
    rng = random.Random(7)
    hot = SamplingParams(temperature=0.7, top_k=20, seed=5)
    requests = [
        RequestSpec(request_id=f"r{i}", prompt_token_ids=repetitive_prompt(rng, 10 + i), max_tokens=10, sampling=hot)
        for i in range(3)
    ]

    def run() -> dict[str, list[int]]:
        ex = executor(model, num_speculative_tokens=2)
        return run_engine(ex, requests, num_speculative_tokens=2, max_steps_in_flight=2).tokens

    first = run()
    assert first == run()
    assert all(len(tokens) == 10 for tokens in first.values())
