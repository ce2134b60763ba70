import random
import statistics

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tokensched.benchmark.metrics import percentile
from tokensched.benchmark.workloads import (
    Arrivals,
    CodingAgentConfig,
    CodingAgentGenerator,
    CodingAgentSource,
    SessionRecord,
    coding_agent,
)
from tokensched.benchmark.workloads.coding_agent import _sampled_statistics, session_statistics
from tokensched.benchmark.workloads.estimate import BulkEstimate, estimate_in_bulk


def _sessions(count: int, config: CodingAgentConfig | None = None, seed: int = 1) -> list[SessionRecord]:
    generator = CodingAgentGenerator(config or CodingAgentConfig(), seed)
    return [generator.sample_session(f"s{i}") for i in range(count)]


def test_first_turn_is_40k_to_50k_tokens_around_the_published_45k() -> None:
    firsts = [s.turns[0].new_tokens for s in _sessions(2_000)]
    assert min(firsts) >= 40_000
    assert max(firsts) <= 50_000
    assert statistics.fmean(firsts) == pytest.approx(45_000, rel=0.01)


def test_prompts_grow_from_45k_to_near_200k_within_each_session() -> None:
    sessions = _sessions(400)
    for session in sessions:
        lengths = session.prompt_lengths()
        assert lengths == sorted(lengths)
        assert lengths[-1] + session.turns[-1].output_tokens <= 200_000
    last = [s.prompt_lengths()[-1] for s in sessions]
    assert statistics.median(last) > 185_000  # the cap, not a turn count, ends a session
    every = sorted(p for s in sessions for p in s.prompt_lengths())
    assert percentile(every, 10) < 70_000 and percentile(every, 90) > 170_000  # the whole published range


def test_later_turns_add_the_previous_answer_and_new_tokens_of_median_3000() -> None:
    growth = []
    for session in _sessions(300):
        lengths = session.prompt_lengths()
        for k in range(1, len(lengths)):
            added = lengths[k] - lengths[k - 1] - session.turns[k - 1].output_tokens
            assert added == session.turns[k].new_tokens
            growth.append(added)
    assert statistics.median(growth) == pytest.approx(3_000, rel=0.05)


def test_answers_follow_the_published_p50_and_p99_and_their_mean_is_near_450() -> None:
    lengths = CodingAgentConfig().output_lengths()
    assert lengths.quantile(0.5) == pytest.approx(293)
    assert lengths.quantile(0.99) == pytest.approx(2_230)
    assert lengths.mean() == pytest.approx(450, rel=0.06)  # 429: two quantiles fix a lognormal, the mean follows
    answers = sorted(t.output_tokens for s in _sessions(400) for t in s.turns)
    assert percentile(answers, 50) == pytest.approx(293, rel=0.05)
    assert percentile(answers, 99) == pytest.approx(2_230, rel=0.15)


def test_turn_counts_can_be_bounded_explicitly() -> None:
    config = CodingAgentConfig(min_turns=10, max_turns=15, new_tokens_median=800, new_tokens_sigma=0.1)
    counts = [len(s.turns) for s in _sessions(3_000, config)]
    assert set(counts) == set(range(10, 16))
    for turns in range(10, 16):
        assert counts.count(turns) / len(counts) == pytest.approx(1 / 6, abs=0.03)


def test_think_time_median_matches_config_and_first_turn_has_none() -> None:
    sessions = _sessions(500)
    assert all(s.turns[0].think_time == 0 for s in sessions)
    pauses = [t.think_time for s in sessions for t in s.turns[1:]]
    assert statistics.median(pauses) == pytest.approx(5.0, rel=0.08)


def test_context_cap_ends_sessions_before_a_turn_would_pass_it() -> None:
    config = CodingAgentConfig(max_context_tokens=55_000)
    sessions = _sessions(300, config)
    for session in sessions:
        last_prompt = session.prompt_lengths()[-1]
        assert last_prompt + session.turns[-1].output_tokens <= 55_000
    assert statistics.fmean(len(s.turns) for s in sessions) < 8  # the cap binds before the planned turns end


def test_rate_arrivals_offer_the_target_tpm_over_a_long_run() -> None:
    duration = 20 * 3_600.0
    source = CodingAgentSource(CodingAgentConfig(), Arrivals(target_tpm=2_500_000, steady_start=False), duration, 5)
    trace = source.take(1_000_000)
    starts = [s.start_time or 0.0 for s in trace.sessions]
    assert starts == sorted(starts)
    assert all(s.start_time is not None and 0 <= s.start_time < duration for s in trace.sessions)
    assert source.rate_scale == 1.0  # no window: the plain Poisson rate
    offered_tpm = sum(s.input_tokens() for s in trace.sessions) / (duration / 60)
    assert offered_tpm == pytest.approx(2_500_000, rel=0.1)


def test_same_new_sessions_at_every_load_level_only_start_times_differ() -> None:
    def new_sessions(tpm: float) -> list[SessionRecord]:
        trace = CodingAgentSource(CodingAgentConfig(), Arrivals(target_tpm=tpm), 3_600, seed=2).take(1_000)
        return [s for s in trace.sessions if s.join_turn == 0]

    low, high = new_sessions(500_000), new_sessions(3_000_000)
    assert len(low) >= 3 and len(high) > len(low)
    assert [s.turns for s in low] == [s.turns for s in high[: len(low)]]
    assert [s.start_time for s in low] != [s.start_time for s in high[: len(low)]]


def test_same_seed_same_sessions_other_seed_other_sessions() -> None:
    def trace(seed: int) -> str:
        source = CodingAgentSource(CodingAgentConfig(), Arrivals(target_tpm=1e6), 600, seed=seed)
        return source.take(10).model_dump_json()

    assert trace(4) == trace(4)
    assert trace(4) != trace(5)


def test_concurrency_arrivals_stagger_only_the_first_sessions() -> None:
    arrivals = Arrivals(concurrency=3, stagger_s=8, steady_start=False)
    source = CodingAgentSource(CodingAgentConfig(), arrivals, 600, seed=0)
    sessions = source.take(5).sessions
    assert all(s.start_time is not None and 0 <= s.start_time <= 8 for s in sessions[:3])
    assert all(s.start_time is None for s in sessions[3:])


def test_config_rejects_inverted_ranges_and_ambiguous_arrivals() -> None:
    with pytest.raises(ValidationError, match="min_turns"):
        CodingAgentConfig(min_turns=5, max_turns=4)
    with pytest.raises(ValidationError, match="exactly one"):
        Arrivals(target_tpm=1e6, concurrency=4)
    with pytest.raises(ValidationError, match="exactly one"):
        Arrivals()


def _reference_turns(config: CodingAgentConfig, rng: random.Random) -> tuple[list[tuple[int, int, float]], int]:
    """A session's draws with the library's samplers, one method call each (what sample_turns must equal)."""
    outputs, new, think = config.output_lengths(), config.new_tokens(), config.think_times()
    num_turns = rng.randint(config.min_turns, config.max_turns)
    first = rng.randint(config.first_turn_min_tokens, config.first_turn_max_tokens)
    answer = min(outputs.sample_int(rng), config.max_context_tokens - first)
    turns = [(first, answer, 0.0)]
    context = first + answer
    for _ in range(num_turns - 1):
        new_tokens, answer, pause = new.sample_int(rng), outputs.sample_int(rng), think.sample(rng)
        if context + new_tokens + answer > config.max_context_tokens:
            break
        turns.append((new_tokens, answer, pause))
        context += new_tokens + answer
    return turns, rng.getrandbits(62)


_CONFIGS = st.builds(
    CodingAgentConfig,
    first_turn_min_tokens=st.integers(1, 3_000),
    first_turn_max_tokens=st.integers(3_000, 6_000),
    new_tokens_median=st.sampled_from([0.0, 50.0, 3_000.0]),
    new_tokens_sigma=st.floats(0.0, 2.0),
    min_turns=st.integers(1, 5),
    max_turns=st.integers(5, 60),
    output_max_tokens=st.sampled_from([1, 500, 16_384]),
    think_time_median_s=st.sampled_from([0.0, 5.0]),
    max_context_tokens=st.integers(6_001, 100_000),
)


@given(config=_CONFIGS, seed=st.integers(0, 10_000), stream=st.sampled_from(["sessions", "estimate"]))
@settings(deadline=None)
def test_sampled_turns_are_the_draws_of_the_librarys_samplers_in_order(
    config: CodingAgentConfig, seed: int, stream: str
) -> None:
    generator = CodingAgentGenerator(config, seed, stream=stream)
    reference = random.Random(f"tokensched/coding-agent/{stream}/{seed}")
    for _ in range(3):
        assert generator.sample_turns() == _reference_turns(config, reference)


@given(config=_CONFIGS, seed=st.integers(0, 10_000), samples=st.integers(1, 120))
@settings(deadline=None, max_examples=60)
def test_statistics_from_bulk_draws_equal_the_statistics_of_sessions_drawn_one_by_one(
    config: CodingAgentConfig, seed: int, samples: int
) -> None:
    reference = _sampled_statistics(config, seed, samples)
    session_statistics.cache_clear()
    assert session_statistics(config, seed, samples) == reference
    generator = CodingAgentGenerator(config, seed, stream="estimate")
    bulk = estimate_in_bulk(config, generator.state(), samples)
    assert bulk is not None  # these configurations are all emulated, not left to the fallback
    assert generator.sample_turns()[0] == bulk.first_session
    assert generator.state() == bulk.state_after_first


def test_statistics_fall_back_to_one_by_one_draws_when_the_bulk_draws_disagree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = CodingAgentConfig(max_context_tokens=60_000)
    reference = _sampled_statistics(config, 3, 50)

    def disagreeing(config: CodingAgentConfig, state: tuple[object, ...], samples: int) -> BulkEstimate | None:
        bulk = estimate_in_bulk(config, state, samples)
        assert bulk is not None
        return attrs.evolve(bulk, input_tokens=bulk.input_tokens + 1, first_session=[(1, 1, 0.0)])

    monkeypatch.setattr(coding_agent, "estimate_in_bulk", disagreeing)
    session_statistics.cache_clear()
    assert session_statistics(config, 3, 50) == reference
    session_statistics.cache_clear()
