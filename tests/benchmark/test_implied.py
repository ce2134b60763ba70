"""The implied-reuse back-of-envelope: it inverts the cost model's TTFT, and agrees with a hand calculation."""

from __future__ import annotations

import pytest

from tokensched.benchmark.implied import PrefillClock, _stream, clock_for, implied_fraction, p50_ttft, utilisation
from tokensched_sim import BatchShape


class PerToken:
    """A cost model whose steps take 10 us per query token: prefill time is linear in what is not cached."""

    def step_time(self, shape: BatchShape) -> float:
        return shape.num_tokens * 1e-5


def test_at_light_load_the_implied_share_is_the_target_over_a_median_prompt_prefill() -> None:
    clock = PrefillClock(PerToken(), chunk_tokens=8192)
    # ~1 turn an hour: no queueing, so p50 TTFT = u x median prompt (uniform 45k-200k: 122.5k) x 10 us
    result = implied_fraction(clock, tpm=2_000.0, target_ttft_s=0.5)
    assert result.uncached_fraction == pytest.approx(0.5 / 1.225, rel=0.02)
    assert result.utilisation is not None and result.utilisation < 0.01
    assert result.max_stable_fraction == pytest.approx(1.0, abs=1e-2)


def test_the_p50_grows_with_the_uncached_share_and_the_inverse_lands_on_the_target() -> None:
    clock = clock_for("trtllm")
    stream = _stream(2.5e6, 2_000, seed=1)
    p50s = [p50_ttft(clock, stream, u) for u in (0.0, 0.05, 0.1, 0.2, 0.3)]
    assert p50s == sorted(p50s) and p50s[0] == 0.0
    assert utilisation(clock, stream, 0.2) < utilisation(clock, stream, 0.3)
    result = implied_fraction(clock, 2.5e6, 1.1, num_requests=2_000, seed=1)
    assert result.uncached_fraction is not None
    assert p50_ttft(clock, stream, result.uncached_fraction) == pytest.approx(1.1, rel=0.05)


def test_a_target_no_share_reaches_has_no_implied_share() -> None:
    clock = PrefillClock(PerToken(), chunk_tokens=8192)
    # 2.5M TPM at 10 us a token needs 0.42 s of prefill per second: stable up to u = 1 with a modest wait
    result = implied_fraction(clock, tpm=2.5e6, target_ttft_s=1_000.0)
    assert result.uncached_fraction is None


def test_bad_arguments_are_refused() -> None:
    clock = PrefillClock(PerToken(), chunk_tokens=8192)
    with pytest.raises(ValueError, match="positive"):
        implied_fraction(clock, tpm=0.0, target_ttft_s=1.0)
    with pytest.raises(ValueError, match="chunk_tokens"):
        PrefillClock(PerToken(), chunk_tokens=0)
