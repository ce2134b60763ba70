"""Small seeded distributions for workloads, in pure Python (no numpy on the control plane).

The output-length model is a lognormal fitted to three published figures of a
coding agent's answers (mean, median, 99th percentile) and clipped to a sane
range. Three targets cannot all be met by a two-parameter family, so the fit
minimises the squared error of their logarithms: each target misses by a few
percent instead of one missing by twenty.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from statistics import NormalDist

import attrs

_STANDARD_NORMAL = NormalDist()
_Z99 = _STANDARD_NORMAL.inv_cdf(0.99)
NV_MAGICCONST = 4 * math.exp(-0.5) / math.sqrt(2.0)  # random.normalvariate's constant, the same expression


@attrs.frozen(slots=True)
class LogNormal:
    """``exp(N(mu, sigma))``, clipped to ``[low, high]`` and rounded to an integer when sampled."""

    mu: float
    sigma: float
    low: float = 0.0
    high: float = math.inf

    @classmethod
    def from_median(cls, median: float, sigma: float, low: float = 0.0, high: float = math.inf) -> LogNormal:
        if median <= 0:
            raise ValueError(f"median must be positive, got {median}")
        return cls(mu=math.log(median), sigma=sigma, low=low, high=high)

    @classmethod
    def from_quantiles(
        cls, median: float, q: float, value_at_q: float, low: float = 0.0, high: float = math.inf
    ) -> LogNormal:
        """The lognormal with this median whose ``q``-quantile is ``value_at_q`` (two published figures)."""
        if not 0.5 < q < 1:
            raise ValueError(f"need 0.5 < q < 1, got {q}")
        if not 0 < median < value_at_q:
            raise ValueError(f"need 0 < median < value_at_q, got median={median}, value_at_q={value_at_q}")
        sigma = (math.log(value_at_q) - math.log(median)) / _STANDARD_NORMAL.inv_cdf(q)
        return cls(mu=math.log(median), sigma=sigma, low=low, high=high)

    @classmethod
    def fit(cls, mean: float, p50: float, p99: float, low: float = 1.0, high: float = math.inf) -> LogNormal:
        """The lognormal whose mean, median and p99 are closest (in log space) to the targets.

        In log space the three targets are linear in ``mu`` except for the mean's
        ``sigma**2 / 2`` term, so ``mu`` has a closed form for each ``sigma`` and a
        one-dimensional golden-section search over ``sigma`` finishes the fit.
        """
        if not 0 < p50 < p99:
            raise ValueError(f"need 0 < p50 < p99, got p50={p50}, p99={p99}")
        if mean <= 0:
            raise ValueError(f"mean must be positive, got {mean}")
        log_mean, log_p50, log_p99 = math.log(mean), math.log(p50), math.log(p99)

        def best_mu(sigma: float) -> float:
            return (log_p50 + (log_p99 - _Z99 * sigma) + (log_mean - sigma * sigma / 2)) / 3

        def error(sigma: float) -> float:
            mu = best_mu(sigma)
            return (mu - log_p50) ** 2 + (mu + _Z99 * sigma - log_p99) ** 2 + (mu + sigma * sigma / 2 - log_mean) ** 2

        lo, hi = 1e-6, 5.0
        ratio = (math.sqrt(5) - 1) / 2
        for _ in range(100):
            a = hi - ratio * (hi - lo)
            b = lo + ratio * (hi - lo)
            if error(a) < error(b):
                hi = b
            else:
                lo = a
        sigma = (lo + hi) / 2
        return cls(mu=best_mu(sigma), sigma=sigma, low=low, high=high)

    def sample(self, rng: random.Random) -> float:
        value = rng.lognormvariate(self.mu, self.sigma)
        return min(max(value, self.low), self.high)

    def sample_int(self, rng: random.Random) -> int:
        return round(self.sample(rng))

    def sampler(self, rng: random.Random) -> Callable[[], float]:
        """A function returning what successive :meth:`sample` calls on ``rng`` would, bit for bit, ~1.5x faster.

        ``random.Random.lognormvariate`` is ``exp(normalvariate(mu, sigma))``, and
        ``normalvariate`` is Kinderman and Monahan's ratio-of-uniforms method: two
        ``random()`` calls per attempt until ``z * z / 4 <= -log(u2)``. The same
        draws and the same arithmetic in one closure, without the method calls
        in between. A workload draws hundreds of thousands of these, and its
        sessions must stay the same for a seed, so a faster generator is not an
        option (tested against the library's on random parameters).
        """
        uniform, log, exp = rng.random, math.log, math.exp
        mu, sigma, low, high = self.mu, self.sigma, self.low, self.high

        def draw() -> float:
            while True:
                u1 = uniform()
                u2 = 1.0 - uniform()
                z = NV_MAGICCONST * (u1 - 0.5) / u2
                if z * z / 4.0 <= -log(u2):
                    break
            value = exp(mu + z * sigma)
            value = low if low > value else value  # max(value, low), ties to value
            return high if high < value else value  # min(value, high), ties to value

        return draw

    def quantile(self, q: float) -> float:
        """The ``q``-quantile of the clipped distribution (clipping maps quantiles monotonically)."""
        value = math.exp(self.mu + self.sigma * _STANDARD_NORMAL.inv_cdf(q))
        return min(max(value, self.low), self.high)

    def mean(self) -> float:
        """Mean of the clipped distribution, in closed form.

        ``E[clip(X, a, b)] = a P(X<a) + E[X; a<=X<=b] + b P(X>b)``, and the middle term of
        a lognormal is ``exp(mu + sigma^2/2) (Phi(d_b - sigma) - Phi(d_a - sigma))``
        with ``d_x = (ln x - mu) / sigma``.
        """
        phi = _STANDARD_NORMAL.cdf
        d_low = (math.log(self.low) - self.mu) / self.sigma if self.low > 0 else -math.inf
        d_high = (math.log(self.high) - self.mu) / self.sigma if math.isfinite(self.high) else math.inf
        below = self.low * phi(d_low) if self.low > 0 else 0.0
        above = self.high * (1 - phi(d_high)) if math.isfinite(self.high) else 0.0
        middle = math.exp(self.mu + self.sigma**2 / 2) * (
            (phi(d_high - self.sigma) if math.isfinite(d_high) else 1.0)
            - (phi(d_low - self.sigma) if math.isfinite(d_low) else 0.0)
        )
        return below + middle + above
