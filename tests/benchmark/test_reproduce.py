"""The reproduction's reporting: a point whose seeds disagree on steadiness is a cliff, not a ratio."""

import math

import pytest

from tokensched.benchmark.reproduce import (
    REPRODUCTIONS,
    ComparisonRow,
    Verdict,
    describe,
    order_matches,
    steady_spread,
    verdict_of,
)
from tokensched.benchmark.sweep import Spread


def row(label: str, published: float, p50s: list[float], overloaded: list[bool]) -> ComparisonRow:
    verdict = verdict_of(overloaded)
    steady = steady_spread(p50s, overloaded)
    ratio = steady.median / published if verdict is Verdict.STEADY and steady is not None else math.nan
    return ComparisonRow(
        label=label,
        profile=label,
        num_gpus=4,
        tpm=2.5e6,
        published_s=published,
        simulated_s=Spread.of(p50s),
        steady_s=steady,
        seed_p50s_s=p50s,
        seed_overloaded=overloaded,
        offered_tpm=2.5e6,
        ratio=ratio,
        verdict=verdict,
        overloaded=2 * sum(overloaded) > len(overloaded),
    )


def test_verdict_is_steady_overloaded_or_cliff_by_whether_the_seeds_agree() -> None:
    assert verdict_of([False, False, False]) is Verdict.STEADY
    assert verdict_of([True, True]) is Verdict.OVERLOADED
    assert verdict_of([False, True, False]) is Verdict.CLIFF
    with pytest.raises(ValueError, match="at least one seed"):
        verdict_of([])


def test_a_cliff_prints_k_of_n_and_the_steady_seeds_median_never_a_ratio() -> None:
    # The 7-seed trtllm-latency point of docs/sim.md: 2 seeds steady near 0.27 s, 5 overloaded at tens of seconds.
    p50s = [3.99, 0.26, 0.27, 61.4, 98.0, 100.5, 36.8]
    flags = [True, False, False, True, True, True, True]
    cliff = row("trtllm-latency", 1.1, p50s, flags)
    assert cliff.verdict is Verdict.CLIFF and math.isnan(cliff.ratio) and cliff.overloaded_seeds == 5
    assert cliff.steady_s == Spread(median=0.265, low=0.26, high=0.27)
    assert describe(cliff) == "CLIFF: 5 of 7 seeds overloaded; the 2 steady: 0.27 s [0.26-0.27]"


def test_a_steady_row_has_the_ratio_of_its_median_and_an_overloaded_one_none() -> None:
    steady = row("sglang-tp8", 5.1, [0.15, 0.13, 0.18], [False, False, False])
    assert steady.ratio == pytest.approx(0.15 / 5.1)
    assert describe(steady) == "0.15 s [0.13-0.18], 3 of 3 seeds steady"
    over = row("x", 1.0, [40.0, 60.0, 80.0], [True, True, True])
    assert math.isnan(over.ratio) and over.steady_s is None
    assert describe(over).startswith("OVERLOADED in 3 of 3 seeds")


def test_order_ranks_overloaded_last_and_refuses_a_cliff() -> None:
    fast = row("a", 1.1, [0.3, 0.4], [False, False])
    slow = row("b", 5.1, [2.0, 3.0], [False, False])
    assert order_matches([fast, slow]) is True
    assert order_matches([row("a", 1.1, [9.0, 9.5], [False, False]), slow]) is False
    assert order_matches([row("a", 1.1, [50.0, 60.0], [True, True]), slow]) is False  # overloaded is the slowest
    assert order_matches([fast, row("b", 5.1, [0.2, 70.0], [False, True])]) is None  # a cliff has no rank
    assert order_matches([fast]) is None
    alternative = row("b-dp", 5.1, [0.1, 0.2], [False, False]).model_copy(update={"sensitivity": True})
    assert order_matches([fast, slow, alternative]) is True  # a sensitivity row is not ranked


def test_the_published_reproduction_runs_enough_seeds_to_see_a_cliff() -> None:
    assert REPRODUCTIONS["coding-agent-b200"].seeds >= 7
