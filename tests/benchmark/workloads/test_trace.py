from pathlib import Path

import pytest

from tokensched.benchmark.workloads import (
    Arrivals,
    CodingAgentConfig,
    CodingAgentSource,
    SessionWorkload,
    Trace,
    TraceError,
    TraceHeader,
    read_trace,
)

from .helpers import play

SMALL = CodingAgentConfig(
    first_turn_min_tokens=300,
    first_turn_max_tokens=400,
    new_tokens_median=50,
    new_tokens_sigma=0.2,
    min_turns=10,
    max_turns=15,
)


def _signature(specs: list) -> list[tuple[str, float | None, int, int, tuple[int, ...]]]:  # type: ignore[type-arg]
    return [
        (s.request_id, s.arrival_time, s.max_tokens, len(s.prompt_token_ids), tuple(s.prompt_token_ids)) for s in specs
    ]


@pytest.mark.parametrize("arrivals", [Arrivals(target_tpm=100_000), Arrivals(concurrency=3, stagger_s=2.0)])
def test_recorded_run_saved_as_jsonl_replays_exactly(tmp_path: Path, arrivals: Arrivals) -> None:
    recorded = SessionWorkload(CodingAgentSource(SMALL, arrivals, 300.0, seed=21))
    original = play(recorded, latency=1.5)
    path = tmp_path / "run.jsonl"
    recorded.trace().save(path)

    loaded = Trace.load(path)
    assert loaded == recorded.trace()
    replayed = play(SessionWorkload.from_trace(loaded), latency=1.5)
    assert _signature(replayed) == _signature(original)
    assert len(original) > 10


def test_every_line_is_one_json_record_header_first(tmp_path: Path) -> None:
    trace = CodingAgentSource(SMALL, Arrivals(target_tpm=100_000), 300.0, seed=1).take(3)
    path = tmp_path / "nested" / "t.jsonl"
    trace.save(path)
    lines = path.read_text().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith('{"kind":"header"')
    assert all(line.startswith('{"kind":"session"') for line in lines[1:])
    header, sessions = read_trace(path)
    assert header == trace.header
    assert tuple(sessions) == trace.sessions


def test_open_loop_replay_under_another_latency_keeps_every_arrival() -> None:
    trace = CodingAgentSource(SMALL, Arrivals(target_tpm=100_000, steady_start=False), 300.0, seed=8).take(1_000)
    assert trace.header.turns == "open"
    fast = play(SessionWorkload.from_trace(trace), latency=1.0)
    slow = play(SessionWorkload.from_trace(trace), latency=30.0)
    assert [(s.request_id, s.arrival_time, len(s.prompt_token_ids)) for s in fast] == [
        (s.request_id, s.arrival_time, len(s.prompt_token_ids)) for s in slow
    ]


def test_closed_loop_replay_under_another_latency_keeps_demand_but_shifts_later_turns() -> None:
    arrivals = Arrivals(target_tpm=100_000, steady_start=False, turns="closed")
    trace = CodingAgentSource(SMALL, arrivals, 300.0, seed=8).take(1_000)
    fast = play(SessionWorkload.from_trace(trace), latency=1.0)
    slow = play(SessionWorkload.from_trace(trace), latency=3.0)
    first = {s.request_id: s.arrival_time for s in fast if s.request_id.endswith("/0")}
    assert first == {s.request_id: s.arrival_time for s in slow if s.request_id.endswith("/0")}
    later_fast = {s.request_id: s.arrival_time or 0.0 for s in fast}
    assert all((s.arrival_time or 0.0) > later_fast[s.request_id] for s in slow if s.request_id.endswith("/1"))


def test_bad_lines_are_reported_with_their_line_number(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    header = TraceHeader(arrival="rate", target_tpm=1e6, duration_s=60.0).model_dump_json()
    path.write_text(header + "\n" + '{"kind": "session", "session_id": "x", "token_seed": 1, "turns": []}\n')
    with pytest.raises(TraceError, match=r"bad.jsonl:2: not a valid SessionRecord"):
        Trace.load(path)
    path.write_text("")
    with pytest.raises(TraceError, match="empty trace"):
        Trace.load(path)
    path.write_text("not json\n")
    with pytest.raises(TraceError, match=r":1: not a valid TraceHeader"):
        Trace.load(path)
    with pytest.raises(TraceError, match="cannot read"):
        Trace.load(tmp_path / "missing.jsonl")


def test_rate_trace_sessions_need_start_times() -> None:
    trace = CodingAgentSource(SMALL, Arrivals(concurrency=2), 60.0, seed=1).take(3)
    as_rate = Trace(header=TraceHeader(arrival="rate", target_tpm=1e6, duration_s=60.0), sessions=trace.sessions)
    with pytest.raises(TraceError, match="without start_time"):
        SessionWorkload.from_trace(as_rate)
