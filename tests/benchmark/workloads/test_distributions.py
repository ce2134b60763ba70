import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.benchmark.metrics import percentile
from tokensched.benchmark.workloads import CodingAgentConfig, LogNormal
from tokensched.benchmark.workloads.distributions import NV_MAGICCONST


def test_fitted_output_lengths_hit_mean_median_and_p99_within_tolerance() -> None:
    lengths = CodingAgentConfig().output_lengths()
    rng = random.Random(7)
    sample = sorted(lengths.sample_int(rng) for _ in range(100_000))
    assert sum(sample) / len(sample) == pytest.approx(450, rel=0.05)
    assert percentile(sample, 50) == pytest.approx(293, rel=0.05)
    assert percentile(sample, 99) == pytest.approx(2_230, rel=0.06)
    assert sample[0] >= 1
    assert sample[-1] <= 16_384


def test_closed_form_mean_and_quantiles_agree_with_sampling() -> None:
    dist = LogNormal(mu=2.0, sigma=1.1, low=1.0, high=40.0)
    rng = random.Random(3)
    sample = sorted(dist.sample(rng) for _ in range(100_000))
    assert sum(sample) / len(sample) == pytest.approx(dist.mean(), rel=0.01)
    for q in (0.1, 0.5, 0.9):
        assert percentile(sample, q * 100) == pytest.approx(dist.quantile(q), rel=0.03)
    assert dist.quantile(0.999) == 40.0  # clipped


def test_fit_minimises_log_error_so_no_target_is_far_off() -> None:
    dist = LogNormal.fit(mean=450, p50=293, p99=2_230)
    errors = [
        math.log(dist.mean() / 450),
        math.log(dist.quantile(0.5) / 293),
        math.log(dist.quantile(0.99) / 2_230),
    ]
    assert max(abs(e) for e in errors) < 0.05


def test_fit_rejects_targets_no_lognormal_can_have() -> None:
    with pytest.raises(ValueError, match="p50 < p99"):
        LogNormal.fit(mean=10, p50=20, p99=5)
    with pytest.raises(ValueError, match="mean"):
        LogNormal.fit(mean=0, p50=1, p99=5)


def test_the_normal_constant_is_the_librarys() -> None:
    assert NV_MAGICCONST == random.NV_MAGICCONST


@given(
    seed=st.integers(0, 2**64),
    mu=st.floats(-20.0, 20.0),
    sigma=st.floats(0.0, 4.0),
    low=st.sampled_from([0.0, 0, 1, 0.5, 300.0]),
    high=st.sampled_from([math.inf, 16_384, 2.0, 0.0, 1e6]),
    count=st.integers(1, 60),
)
@settings(deadline=None)
def test_sampler_returns_the_librarys_lognormal_draws_bit_for_bit(
    seed: int, mu: float, sigma: float, low: float, high: float, count: int
) -> None:
    dist = LogNormal(mu=mu, sigma=sigma, low=low, high=high)
    fast, reference = random.Random(seed), random.Random(seed)
    draw = dist.sampler(fast)
    for _ in range(count):
        value, expected = draw(), dist.sample(reference)
        assert value == expected and type(value) is type(expected)
        assert math.copysign(1.0, value) == math.copysign(1.0, expected)
    assert fast.getstate() == reference.getstate()  # the same uniforms were consumed
