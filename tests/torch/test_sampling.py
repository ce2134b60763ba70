"""Sampling, verification and drafting, on hand-made logits."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from tokensched.config import SamplingParams  # noqa: E402
from tokensched_torch.drafter import NgramDrafter  # noqa: E402
from tokensched_torch.sampling import (  # noqa: E402
    SampleRequest,
    choose_tokens,
    filtered_probs,
    request_seed,
    uniform,
)

GREEDY = SamplingParams()
HOT = SamplingParams(temperature=1.0, seed=7)


def test_uniforms_depend_only_on_seed_position_and_stream() -> None:
    draws = [uniform(3, p) for p in range(1000)]
    assert draws == [uniform(3, p) for p in range(1000)]
    assert all(0.0 <= u < 1.0 for u in draws)
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert uniform(3, 5, 0) != uniform(3, 5, 1) and uniform(3, 5) != uniform(4, 5)


def test_request_seed_prefers_the_requests_own_seed_and_is_stable_otherwise() -> None:
    assert request_seed(0, "x", SamplingParams(seed=42)) == 42
    assert request_seed(0, "x", GREEDY) == request_seed(0, "x", GREEDY) != request_seed(1, "x", GREEDY)


def test_top_k_and_top_p_keep_the_expected_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, top_k=2)) > 0).tolist() == [
        [True, True, False, False]
    ]
    # Mass before token 2 is 0.8 < 0.85, so it stays; token 3 (mass before 0.95) goes.
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.85)) > 0).tolist() == [
        [True, True, True, False]
    ]
    assert (filtered_probs(logits, SamplingParams(temperature=1.0, top_p=0.1)) > 0).tolist() == [
        [True, False, False, False]
    ]


def test_sampling_follows_the_distribution() -> None:
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))[None].repeat(2000, 1)
    requests = [SampleRequest(i, (), HOT, seed=11, first_position=i) for i in range(2000)]
    tokens, _ = choose_tokens(logits, requests)
    counts = [sum(t == [v] for t in tokens) / 2000 for v in range(3)]
    assert counts == pytest.approx([0.7, 0.2, 0.1], abs=0.04)


def test_greedy_verification_accepts_the_matching_prefix_then_corrects() -> None:
    logits = torch.zeros(4, 10)
    for row, best in enumerate([3, 4, 5, 6]):
        logits[row, best] = 1.0
    accept_all = SampleRequest(0, (3, 4, 5), GREEDY, seed=0, first_position=10)
    reject_second = SampleRequest(0, (3, 9, 5), GREEDY, seed=0, first_position=10)
    tokens, logprobs = choose_tokens(logits, [accept_all, reject_second])
    assert tokens == [[3, 4, 5, 6], [3, 4]]
    assert logprobs is None


def test_random_verification_accepts_certain_drafts_and_never_emits_a_rejected_one() -> None:
    logits = torch.full((3, 5), -1e9, dtype=torch.float64)
    logits[0, 2] = 0.0  # p(2) = 1: draft 2 must be accepted
    logits[1, :] = 0.0  # uniform: draft 4 rejected sometimes
    logits[2, 1] = 0.0
    for seed in range(50):
        tokens, _ = choose_tokens(logits, [SampleRequest(0, (2, 4), HOT, seed=seed, first_position=0)])
        assert tokens[0][0] == 2
        assert tokens[0] == [2, 4, 1] or (len(tokens[0]) == 2 and tokens[0][1] != 4)


def test_logprobs_are_reported_only_for_requests_that_ask() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]], dtype=torch.float64))
    asking = SampleRequest(0, (), SamplingParams(logprobs=True), seed=0, first_position=0)
    quiet = SampleRequest(1, (), GREEDY, seed=0, first_position=0)
    tokens, logprobs = choose_tokens(logits, [asking, quiet])
    assert tokens == [[0], [2]]
    assert logprobs is not None and logprobs[0] == pytest.approx([torch.log(torch.tensor(0.5)).item()])
    assert logprobs[1] == []


def test_ngram_drafter_proposes_what_followed_the_latest_match() -> None:
    drafter = NgramDrafter(min_n=1, max_n=3)
    assert drafter.propose([1, 2, 3, 4, 9, 1, 2, 3], 3) == [4, 9, 1]
    # The longest suffix wins over a more recent shorter match.
    assert drafter.propose([5, 6, 7, 8, 6, 0, 5, 6], 2) == [7, 8]
    assert drafter.propose([1, 2, 3], 2) == []
    assert drafter.propose([4, 4], 3) == [4]
    assert drafter.propose([1, 2, 1, 2], 0) == []


def test_random_verification_preserves_the_target_distribution() -> None:
    """Accepting draft d with probability p(d), else drawing from p without d, emits tokens distributed as p."""
    p = torch.tensor([0.1, 0.2, 0.3, 0.15, 0.25], dtype=torch.float64)
    logits = torch.log(p)[None].repeat(2, 1)
    n = 4000
    firsts = [choose_tokens(logits, [SampleRequest(0, (2,), HOT, seed=s, first_position=0)])[0][0][0] for s in range(n)]
    freq = [firsts.count(v) / n for v in range(5)]
    assert freq == pytest.approx(p.tolist(), abs=0.03)


def test_a_subnormal_temperature_gives_a_distribution_not_nan() -> None:
    # 5e-324 is the smallest positive double: dividing logits by it overflows to inf, and softmax(inf) is NaN
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0]])
    probs = filtered_probs(logits, SamplingParams(temperature=5e-324, seed=1))
    assert not torch.isnan(probs).any()
    assert probs.tolist() == [[0.0, 0.5, 0.0, 0.5]]
