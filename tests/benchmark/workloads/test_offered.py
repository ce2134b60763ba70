from hypothesis import given, settings
from hypothesis import strategies as st

from tokensched.benchmark.workloads import Arrivals, CodingAgentConfig, CodingAgentSource

SHORT = CodingAgentConfig(
    first_turn_min_tokens=2_000,
    first_turn_max_tokens=4_000,
    new_tokens_median=500,
    max_context_tokens=20_000,
    think_time_median_s=3.0,
)


def _offered_by_the_schedule(source: CodingAgentSource, scale: float, window: tuple[float, float]) -> int:
    """The reference: build the schedule at ``scale`` and add up the prompts its turns send inside ``window``."""
    start, end = window
    total = 0
    for session in source.schedule(scale):
        offsets, lengths = session.turn_offsets(), session.prompt_lengths()
        origin = (session.start_time or 0.0) - offsets[session.join_turn]
        for offset, length in zip(offsets[session.join_turn :], lengths[session.join_turn :], strict=True):
            if start <= origin + offset < end:
                total += length
    return total


@given(
    config=st.sampled_from([SHORT, CodingAgentConfig()]),
    seed=st.integers(0, 2),
    steady_start=st.booleans(),
    scales=st.lists(st.floats(0.25, 4.0), min_size=1, max_size=4),
    window=st.tuples(st.floats(0.0, 400.0), st.floats(1.0, 900.0)).map(sorted),
)
@settings(deadline=None, max_examples=40)
def test_offered_tokens_are_what_the_built_schedule_sends_inside_the_window(
    config: CodingAgentConfig, seed: int, steady_start: bool, scales: list[float], window: list[float]
) -> None:
    arrivals = Arrivals(target_tpm=2e6 if config is SHORT else 5e6, steady_start=steady_start)
    source = CodingAgentSource(config, arrivals, 600.0, seed)
    for scale in scales:
        start, end = window
        assert source.offered_tokens(scale, (start, end)) == _offered_by_the_schedule(source, scale, (start, end))
