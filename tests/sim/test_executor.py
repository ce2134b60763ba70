"""The SimExecutor on hand-built plans: protocol, clock, tokens, EOS, speculation, determinism."""

from __future__ import annotations

import pytest

from tests.sim.helpers import Entry, drive, make_plan, new_request
from tokensched import Executor, InvalidRequest, TokenschedError, load_executor
from tokensched.plan import StepResult
from tokensched_sim import BatchShape, Deployment, SimExecutor, mean_accepted_length

SMALL = Deployment(model="dense-8b", gpu="h100", tp=1)


def test_is_the_registered_sim_executor() -> None:
    assert load_executor("sim") is SimExecutor
    executor = SimExecutor()
    assert isinstance(executor, Executor)
    assert executor.block_size == 16
    assert executor.num_kv_blocks == executor.cost_model.num_kv_blocks(16)
    assert SimExecutor(num_kv_blocks=64).num_kv_blocks == 64


def test_step_time_is_the_cost_model_of_the_plans_columns() -> None:
    executor = SimExecutor(SMALL)
    plan = make_plan(
        0,
        [Entry("a", 0, 300), Entry("b", 5000, 1), Entry("c", 64, 256, sample=False)],
        new=[new_request("a", 300), new_request("b", 5000), new_request("c", 1000)],
    )
    executor.launch(plan)
    result = executor.collect()
    # a: prefill 300 from 0; c: a non-final chunk 64..320; b: a decode after 5000 tokens.
    shape = BatchShape(
        num_tokens=557,
        num_logits=2,
        prefill_pairs=300 * 301 // 2 + 256 * 64 + 256 * 257 // 2,
        prefill_kv_tokens=300 + 320,
        prefill_context_tokens=64,
        decode_pairs=5001,
        decode_kv_tokens=5001,
    )
    assert result.elapsed == pytest.approx(executor.cost_model.step_time(shape))
    assert [len(t) for t in result.sampled_token_ids] == [1, 1, 0]
    assert result.draft_token_ids is None and result.logprobs is None


def test_clock_serialises_overlapped_steps_and_jumps_when_idle() -> None:
    executor = SimExecutor(SMALL)
    assert executor.now() == 0.0
    executor.wait_until(10.0)
    assert executor.now() == 10.0
    executor.launch(make_plan(0, [Entry("a", 0, 4096)], new=[new_request("a", 4096)]))
    executor.launch(make_plan(1, [Entry("b", 0, 4096)], new=[new_request("b", 4096)]))
    assert executor.now() == 10.0  # launching does not wait
    first = executor.collect().elapsed
    assert first is not None and first > 0.01  # a 4096-token prefill of an 8B model: tens of ms
    assert executor.now() == pytest.approx(10.0 + first)
    second = executor.collect().elapsed  # started when the first ended, not at launch
    assert second is not None
    assert executor.now() == pytest.approx(10.0 + first + second)
    assert executor.stats.busy_s == pytest.approx(first + second)
    executor.wait_until(5.0)  # the past: no effect
    assert executor.now() == pytest.approx(10.0 + first + second)
    with pytest.raises(TokenschedError, match="no step in flight"):
        executor.collect()


def test_a_step_launched_after_idle_time_starts_then() -> None:
    executor = SimExecutor(SMALL)
    executor.launch(make_plan(0, [Entry("a", 0, 10)], new=[new_request("a", 10)]))
    step = executor.collect().elapsed
    assert step is not None
    executor.wait_until(1.0)
    executor.launch(make_plan(1, [Entry("a", 10, 1)]))
    executor.collect()
    assert executor.now() > 1.0


def test_eos_is_forced_at_the_target_length_and_never_sampled_before() -> None:
    lengths = {f"r{i}": n for i, n in enumerate([1, 2, 5, 17, 40])}
    executor = SimExecutor(SMALL, output_lengths=lengths, eos_token_id=3, seed=1)
    outputs, _ = drive(executor, dict.fromkeys(lengths, 20), max_tokens=100)
    for rid, n in lengths.items():
        assert len(outputs[rid]) == n
        assert outputs[rid][-1] == 3
        assert 3 not in outputs[rid][:-1]
        assert all(0 <= t < SMALL.model.vocab_size for t in outputs[rid])


def test_callable_lengths_and_requests_without_a_target() -> None:
    executor = SimExecutor(SMALL, output_lengths=lambda rid: 4 if rid == "short" else None)
    outputs, _ = drive(executor, {"short": 8, "long": 8}, max_tokens=30)
    assert len(outputs["short"]) == 4 and outputs["short"][-1] == 0
    assert len(outputs["long"]) == 30 and 0 not in outputs["long"]


def test_forced_eos_lands_on_the_target_inside_accepted_drafts() -> None:
    lengths = {f"r{i}": 3 + i for i in range(40)}
    executor = SimExecutor(SMALL, output_lengths=lengths, num_speculative_tokens=3, acceptance_rate=0.9, seed=2)
    outputs, _ = drive(executor, dict.fromkeys(lengths, 16), max_tokens=1000)
    for rid, n in lengths.items():
        assert len(outputs[rid]) == n and outputs[rid][-1] == 0 and 0 not in outputs[rid][:-1]


def test_resumed_request_counts_the_outputs_it_already_has() -> None:
    executor = SimExecutor(SMALL, output_lengths={"a": 5})
    executor.launch(make_plan(0, [Entry("a", 0, 13)], new=[new_request("a", 10, outputs=3)]))
    assert executor.collect().sampled_token_ids[0][0] != 0  # fourth output
    executor.launch(make_plan(1, [Entry("a", 13, 1)]))
    assert executor.collect().sampled_token_ids == [[0]]  # fifth: EOS


def test_acceptance_rate_matches_alpha_over_many_drafts() -> None:
    alpha, k = 0.7, 3
    executor = SimExecutor(SMALL, num_speculative_tokens=k, acceptance_rate=alpha, seed=3)
    _, results = drive(executor, {f"r{i}": 32 for i in range(64)}, max_tokens=400)
    stats = executor.stats
    assert stats.num_drafts_verified > 20_000
    # Drafts are verified in order and stop at the first rejection: draft j is reached with
    # probability alpha^(j-1); every one reached is accepted with probability alpha.
    assert stats.acceptance_rate == pytest.approx(alpha, abs=0.02)
    per_step = [len(t) for r in results for t in r.sampled_token_ids if t]
    decodes = per_step[64:]  # after the 64 prefills
    mean = sum(decodes) / len(decodes)
    expected = sum(alpha**j for j in range(k + 1))  # 1 + a + a^2 + a^3 = 2.533 tokens per verification
    assert mean == pytest.approx(expected, rel=0.03)
    assert all(1 <= n <= k + 1 for n in decodes)


def test_accepted_tokens_are_the_drafts_then_a_bonus() -> None:
    executor = SimExecutor(SMALL, num_speculative_tokens=3, acceptance_rate=1.0)
    executor.launch(make_plan(0, [Entry("a", 0, 8)], new=[new_request("a", 8)]))
    first = executor.collect()
    assert first.draft_token_ids is not None
    drafts = tuple(first.draft_token_ids[0])
    assert len(drafts) == 3 and 0 not in drafts
    executor.launch(make_plan(1, [Entry("a", 8, 4, drafts=drafts)]))
    sampled = executor.collect().sampled_token_ids[0]
    assert tuple(sampled[:3]) == drafts and len(sampled) == 4
    never = SimExecutor(SMALL, num_speculative_tokens=2, acceptance_rate=0.0)
    never.launch(make_plan(0, [Entry("a", 0, 8)], new=[new_request("a", 8)]))
    d = tuple(never.collect().draft_token_ids[0])  # type: ignore[index]
    never.launch(make_plan(1, [Entry("a", 8, 3, drafts=d)]))
    assert len(never.collect().sampled_token_ids[0]) == 1


def run_once(seed: int) -> list[StepResult]:
    executor = SimExecutor(SMALL, output_lengths=lambda rid: 5 + int(rid[1:]) % 23, num_speculative_tokens=2, seed=seed)
    _, results = drive(executor, {f"r{i}": 100 + i for i in range(20)}, max_tokens=64, in_flight=2)
    return results


def test_same_seed_same_results() -> None:
    assert run_once(7) == run_once(7)
    assert run_once(7) != run_once(8)


def test_logprobs_only_for_requests_that_ask() -> None:
    executor = SimExecutor(SMALL, output_lengths={"b": 1})
    plan = make_plan(
        0,
        [Entry("a", 0, 4), Entry("b", 0, 4)],
        new=[new_request("a", 4), new_request("b", 4, logprobs=True)],
    )
    executor.launch(plan)
    result = executor.collect()
    assert result.logprobs == [[], [0.0]]  # b's only token is the forced EOS: probability 1
    executor.launch(make_plan(1, [Entry("a", 4, 1)], removed=["b"]))
    assert executor.collect().logprobs is None


def test_a_request_never_sent_in_full_is_refused() -> None:
    executor = SimExecutor(SMALL)
    with pytest.raises(InvalidRequest, match="'ghost' was never sent in full"):
        executor.launch(make_plan(0, [Entry("ghost", 10, 1)]))
    executor.launch(make_plan(1, [Entry("a", 0, 4)], new=[new_request("a", 4)]))
    executor.collect()
    with pytest.raises(InvalidRequest):
        executor.launch(make_plan(2, [Entry("a", 4, 1)], removed=["a"]))


@pytest.mark.parametrize(
    "kwargs",
    [{"eos_token_id": -1}, {"acceptance_rate": 1.5}, {"num_speculative_tokens": -1}, {"num_kv_blocks": 0}],
)
def test_bad_arguments_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SimExecutor(SMALL, **kwargs)  # type: ignore[arg-type]


def test_mean_accepted_length_sets_alpha_and_the_default_is_the_published_kimi_figure() -> None:
    executor = SimExecutor(SMALL, num_speculative_tokens=3, mean_accepted_length=2.0, seed=4)
    assert mean_accepted_length(executor.acceptance_rate, 3) == pytest.approx(2.0)
    _, results = drive(executor, {f"r{i}": 32 for i in range(64)}, max_tokens=300)
    decodes = [len(t) for r in results for t in r.sampled_token_ids if t][64:]
    assert sum(decodes) / len(decodes) == pytest.approx(2.0, rel=0.03)  # drawn per draft: lengths vary
    assert len(set(decodes)) == 4
    default = SimExecutor(SMALL, num_speculative_tokens=3)
    assert mean_accepted_length(default.acceptance_rate, 3) == pytest.approx(2.54)  # Kimi EAGLE-3, 3 drafts
    with pytest.raises(ValueError, match="not both"):
        SimExecutor(SMALL, num_speculative_tokens=3, acceptance_rate=0.5, mean_accepted_length=2.0)
    with pytest.raises(ValueError, match="outside"):
        SimExecutor(SMALL, num_speculative_tokens=3, mean_accepted_length=4.5)


def test_speculation_comes_from_the_deployment_or_is_added_to_it() -> None:
    plain = SimExecutor(SMALL)
    assert plain.num_speculative_tokens == 0 and plain.cost_model.draft is None
    added = SimExecutor(SMALL, num_speculative_tokens=3)
    assert added.deployment.num_speculative_tokens == 3 and added.cost_model.draft is not None
    assert added.num_kv_blocks < plain.num_kv_blocks  # the draft's weights and KV take room
    spec = SMALL.model_copy(update={"num_speculative_tokens": 2})
    assert SimExecutor(spec).num_speculative_tokens == 2
    with pytest.raises(ValueError, match="deployment speculates 2"):
        SimExecutor(spec, num_speculative_tokens=3)
    with pytest.raises(ValueError, match=">= 0"):
        SimExecutor(SMALL, num_speculative_tokens=-1)
