import pytest

from tokensched.benchmark.workloads import (
    Arrivals,
    CodingAgentConfig,
    CodingAgentSource,
    SessionRecord,
    SessionWorkload,
    Trace,
    TraceHeader,
    TurnRecord,
    prompt_tokens,
)
from tokensched.errors import UnknownRequest
from tokensched.plan import FinishReason

from .helpers import answer_tokens, play

SMALL = CodingAgentConfig(
    first_turn_min_tokens=450,
    first_turn_max_tokens=500,
    new_tokens_median=80,
    new_tokens_sigma=0.2,
    min_turns=10,
    max_turns=15,
)


def _one_session(turns: list[tuple[int, int, float]], **header: object) -> SessionWorkload:
    record = SessionRecord(
        session_id="s",
        start_time=1.0,
        token_seed=11,
        turns=tuple(TurnRecord(new_tokens=n, output_tokens=o, think_time=t) for n, o, t in turns),
    )
    fields: dict[str, object] = {"arrival": "rate", "target_tpm": 1.0, "duration_s": 1_000.0, **header}
    return SessionWorkload.from_trace(Trace(header=TraceHeader.model_validate(fields), sessions=(record,)))


def test_next_turn_extends_previous_prompt_and_its_exact_answer() -> None:
    workload = _one_session([(100, 5, 0.0), (20, 3, 4.0), (30, 2, 1.0)])
    assert workload.next_release_time() == 1.0
    assert workload.release(0.5) == []
    (first,) = workload.release(1.0)
    assert first.request_id == "s/0" and first.arrival_time == 1.0 and len(first.prompt_token_ids) == 100
    assert workload.next_release_time() is None  # closed loop: nothing until the answer is in
    answer = [7, 8, 9, 10, 11]
    workload.on_finished("s/0", answer, now=3.0)
    assert workload.next_release_time() == pytest.approx(7.0)  # answer at 3.0 + think time 4.0
    assert workload.release(6.9) == []
    (second,) = workload.release(7.5)
    assert second.arrival_time == pytest.approx(7.0)  # the true arrival, not when the driver looked
    assert second.prompt_token_ids[:105] == [*first.prompt_token_ids, *answer]
    assert len(second.prompt_token_ids) == 125
    workload.on_finished("s/1", [1, 2, 3], now=9.0)
    (third,) = workload.release(10.0)
    assert third.prompt_token_ids[:128] == [*second.prompt_token_ids, 1, 2, 3]
    workload.on_finished("s/2", [4, 5], now=12.0)
    assert workload.next_release_time() is None
    assert workload.counts.sessions_completed == 1
    assert workload.counts.requests_released == 3


def test_a_rewritten_tail_keeps_the_prompt_length_and_shares_only_what_comes_before_it() -> None:
    workload = _one_session([(100, 5, 0.0), (20, 3, 4.0), (30, 2, 1.0)], rewrite_tail_tokens=40)
    (first,) = workload.release(1.0)
    workload.on_finished("s/0", [7, 8, 9, 10, 11], now=3.0)
    (second,) = workload.release(7.5)
    assert len(second.prompt_token_ids) == 125  # 100 + 5 answer + 20 new: lengths as without the rewrite
    assert second.prompt_token_ids[:60] == first.prompt_token_ids[:60]  # the cache hits up to the rewritten 40
    assert second.prompt_token_ids[60:100] != first.prompt_token_ids[60:100]
    assert second.prompt_token_ids[100:105] == [7, 8, 9, 10, 11]  # the answer follows the rewritten tail
    workload.on_finished("s/1", [1, 2, 3], now=9.0)
    (third,) = workload.release(10.0)
    assert third.prompt_token_ids[:85] == second.prompt_token_ids[:85] and len(third.prompt_token_ids) == 158
    assert third.prompt_token_ids[85:125] != second.prompt_token_ids[85:125]


def test_requests_ask_for_the_planned_length_by_default_and_up_to_max_tokens_with_eos() -> None:
    plain = _one_session([(100, 5, 0.0)])
    (spec,) = plain.release(1.0)
    assert (spec.max_tokens, spec.ignore_eos, spec.eos_token_id) == (5, True, None)
    assert plain.planned_output_tokens("s/0") == 5

    record = SessionRecord(
        session_id="s", start_time=1.0, token_seed=11, turns=(TurnRecord(new_tokens=100, output_tokens=5),)
    )
    header = TraceHeader(arrival="rate", target_tpm=1.0, duration_s=10.0, max_context_tokens=1_000)
    with_eos = SessionWorkload(_Source(header, [record]), eos_token_id=0, max_tokens=2_000)
    (spec,) = with_eos.release(1.0)
    assert (spec.max_tokens, spec.ignore_eos, spec.eos_token_id) == (900, False, 0)  # capped by the context
    assert with_eos.planned_output_tokens("s/0") == 5


class _Source:
    def __init__(self, header: TraceHeader, sessions: list[SessionRecord]) -> None:
        self.header = header
        self._sessions = iter(sessions)

    def next_session(self) -> SessionRecord | None:
        return next(self._sessions, None)


def test_a_longer_answer_than_planned_that_would_pass_the_cap_ends_the_session() -> None:
    workload = _one_session([(100, 5, 0.0), (20, 10, 1.0)], max_context_tokens=140)
    workload.release(1.0)
    workload.on_finished("s/0", list(range(5)), now=2.0)
    assert workload.next_release_time() == pytest.approx(3.0)  # planned: 100 + 5 + 20 + 10 fits
    workload = _one_session([(100, 5, 0.0), (20, 10, 1.0)], max_context_tokens=140)
    workload.release(1.0)
    workload.on_finished("s/0", list(range(50)), now=2.0)  # the answer ran long
    assert workload.next_release_time() is None
    assert workload.counts.sessions_capped == 1


def test_failed_turn_ends_its_session_and_unknown_ids_are_refused() -> None:
    workload = _one_session([(100, 5, 0.0), (20, 3, 4.0)])
    workload.release(1.0)
    with pytest.raises(UnknownRequest):
        workload.on_finished("nope", [], now=2.0)
    workload.on_finished("s/0", [], now=2.0, finish_reason=FinishReason.ABORT)
    assert workload.next_release_time() is None
    assert workload.counts.sessions_failed == 1


def test_nothing_is_released_at_or_after_the_duration() -> None:
    workload = _one_session([(100, 5, 0.0), (20, 3, 4.0)], duration_s=5.0)
    workload.release(1.0)
    workload.on_finished("s/0", [1] * 5, now=2.0)  # next turn due at 6.0, past the end
    assert workload.next_release_time() is None
    assert workload.release(10.0) == []


def test_shared_prefix_opens_every_first_turn_and_the_rest_differs() -> None:
    config = SMALL.model_copy(update={"shared_prefix_tokens": 64})
    source = CodingAgentSource(config, Arrivals(target_tpm=200_000), 60.0, seed=3)
    specs = [s for s in play(SessionWorkload(source), until=60.0) if s.request_id.endswith("/0")]
    assert len(specs) >= 3
    shared = prompt_tokens("tokensched/shared-prefix/3", 64, 65_536)
    assert all(s.prompt_token_ids[:64] == shared for s in specs)
    assert len({tuple(s.prompt_token_ids[64:80]) for s in specs}) == len(specs)


def test_concurrency_keeps_that_many_sessions_running() -> None:
    config = SMALL.model_copy(update={"min_turns": 2, "max_turns": 3, "think_time_median_s": 0.5})
    source = CodingAgentSource(config, Arrivals(concurrency=4, stagger_s=1.0), 120.0, seed=1)
    workload = SessionWorkload(source)
    active: list[int] = []
    specs = play(workload, latency=1.0, observe=lambda now: active.append(workload.num_active_sessions))
    assert max(active) == 4
    assert active.count(4) > 0.9 * len(active)  # replaced as soon as one ends, until the duration
    assert len({s.session_id for s in specs}) == workload.counts.sessions_started > 20
    assert all(s.arrival_time is not None and s.arrival_time < 120.0 for s in specs)


def test_released_prompts_arrive_at_the_target_tpm() -> None:
    duration = 3_600.0
    source = CodingAgentSource(SMALL, Arrivals(target_tpm=250_000, steady_start=False), duration, seed=9)
    specs = play(SessionWorkload(source), latency=2.0)
    offered = sum(len(s.prompt_token_ids) for s in specs if (s.arrival_time or 0.0) >= 600) / ((duration - 600) / 60)
    assert offered == pytest.approx(250_000, rel=0.08)


def test_answer_tokens_of_the_helper_are_deterministic() -> None:
    assert answer_tokens("a/1", 4) == answer_tokens("a/1", 4)


def _early_tpm(arrivals: Arrivals, minutes: float) -> float:
    workload = SessionWorkload(CodingAgentSource(SMALL, arrivals, minutes * 60, seed=4))
    specs = play(workload, latency=11.0)  # about the nominal turn time in-progress sessions are placed with
    return sum(len(s.prompt_token_ids) for s in specs) / minutes


def test_steady_start_offers_the_target_tpm_from_the_first_minute() -> None:
    target = 1_000_000
    assert _early_tpm(Arrivals(target_tpm=target), minutes=5) == pytest.approx(target, rel=0.2)
    assert _early_tpm(Arrivals(target_tpm=target, steady_start=False), minutes=5) < 0.7 * target


def test_sessions_in_progress_join_with_their_whole_conversation_uncached() -> None:
    source = CodingAgentSource(SMALL, Arrivals(target_tpm=1_000_000), 600.0, seed=4)
    everything = CodingAgentSource(SMALL, Arrivals(target_tpm=1e6), 600.0, 4).take(10**6).sessions
    assert sum(1 for s in everything if s.join_turn) > 5
    workload = SessionWorkload(source)
    specs = play(workload, latency=2.0, until=30.0)
    joined = [s for s in specs if s.session_id and s.session_id.startswith("p")]
    assert joined
    records = {r.session_id: r for r in workload.trace().sessions}
    for spec in joined:
        record = records[spec.session_id or ""]
        if spec.request_id != f"{record.session_id}/{record.join_turn}":
            continue
        assert record.join_turn >= 1
        assert spec.arrival_time == record.start_time
        assert len(spec.prompt_token_ids) == record.prompt_lengths()[record.join_turn]


def _open_session(turns: list[tuple[int, int, float]]) -> SessionWorkload:
    record = SessionRecord(
        session_id="s",
        start_time=1.0,
        token_seed=11,
        turns=tuple(TurnRecord(new_tokens=n, output_tokens=o, think_time=t) for n, o, t in turns),
    )
    header = TraceHeader(arrival="rate", turns="open", target_tpm=1.0, duration_s=1_000.0)
    return SessionWorkload.from_trace(Trace(header=header, sessions=(record,)))


def test_open_loop_turns_arrive_on_their_timeline_with_the_answer_if_it_is_in_else_a_stand_in() -> None:
    workload = _open_session([(100, 5, 0.0), (20, 3, 4.0), (30, 2, 1.0)])
    (first,) = workload.release(1.0)
    offsets = workload.trace().sessions[0].turn_offsets()
    assert workload.next_release_time() == pytest.approx(1.0 + offsets[1])  # due without waiting for the answer
    answer = [7, 8, 9, 10, 11]
    workload.on_finished("s/0", answer, now=2.0)
    (second,) = workload.release(1.0 + offsets[1])
    assert second.prompt_token_ids[:105] == [*first.prompt_token_ids, *answer]  # the answer was in: used
    (third,) = workload.release(1.0 + offsets[2])  # s/1 still running: its planned answer stands in
    assert len(third.prompt_token_ids) == 125 + 3 + 30
    assert third.prompt_token_ids[:125] == second.prompt_token_ids
    assert workload.counts.stand_in_answers == 1
    workload.on_finished("s/1", [1, 2, 3], now=60.0)  # too late to matter
    workload.on_finished("s/2", [4, 5], now=61.0)
    assert workload.counts.sessions_completed == 1 and workload.next_release_time() is None


def test_open_loop_failed_turn_does_not_end_the_session() -> None:
    workload = _open_session([(100, 5, 0.0), (20, 3, 4.0)])
    workload.release(1.0)
    workload.on_finished("s/0", [], now=1.5, finish_reason=FinishReason.ERROR)
    assert workload.next_release_time() is not None
    (second,) = workload.release(100.0)
    assert len(second.prompt_token_ids) == 125
    assert workload.counts.requests_failed == 1 and workload.counts.sessions_failed == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("target", [500_000, 1_000_000, 2_500_000, 4_000_000])
def test_offered_tpm_in_the_window_is_the_label_within_5_percent_whatever_the_server(seed: int, target: int) -> None:
    window = (60.0, 300.0)
    offered = []
    for latency in (0.5, 45.0):  # a fast server and one far behind: the same arrivals
        source = CodingAgentSource(CodingAgentConfig(), Arrivals(target_tpm=target), 330.0, seed, window=window)
        specs = play(SessionWorkload(source), latency=latency)
        tokens = sum(len(s.prompt_token_ids) for s in specs if window[0] <= (s.arrival_time or 0.0) < window[1])
        offered.append(tokens / (window[1] - window[0]) * 60)
    assert offered[0] == offered[1]
    assert offered[0] == pytest.approx(target, rel=0.05)
