"""Every interleaving of the real Scheduler within small bounds (tokensched.testing.exhaustive)."""

from __future__ import annotations

import pytest

from tokensched.machines.spec import load_spec
from tokensched.scheduler import Scheduler
from tokensched.testing.exhaustive import Bounds, Node, Report, check, explore, main, plan_step, submit_next


@pytest.fixture(scope="module")
def report() -> Report:
    return explore(Bounds())


def test_no_interleaving_breaks_an_invariant_or_overlap_safety_or_liveness(report: Report) -> None:
    print(report.summary())
    assert not report.violations, "\n\n".join(report.violations[:3])
    assert report.states > 1000 and report.finished_states > 0, report.summary()


def test_the_search_takes_every_request_transition_of_the_spec_and_no_other(report: Report) -> None:
    spec = load_spec("request")
    moves = {(t.source, t.target) for t in spec.transitions if t.source != t.target}
    seen = {tuple(k.split(" ", 1)[1].split("->")) for k in report.coverage if k.startswith("request ")}
    assert moves <= seen, f"never exercised: {moves - seen}"
    assert seen <= moves, f"the scheduler moved requests in ways the spec has no transition for: {seen - moves}"


def test_the_search_takes_every_block_transition_of_the_spec(report: Report) -> None:
    spec = load_spec("blocks")
    moves = {(t.source, t.target) for t in spec.transitions if t.source != t.target}
    seen = {tuple(k.split(" ", 1)[1].split("->")) for k in report.coverage if k.startswith("block ")}
    assert moves <= seen, f"never exercised: {moves - seen}"
    for source, target in seen:  # one edge may chain several transitions (commit, then release)
        assert target in spec.reachable(source), f"block {source}->{target} is no path of the spec"
    for event in ("preemptions", "prefix hits", "states with pending blocks", "states with max steps in flight"):
        assert report.coverage[event] > 0, f"no {event} within the bounds: widen them"


def test_the_overlap_check_sees_a_block_handed_out_under_a_step_in_flight() -> None:
    """Not vacuous: settle an aborted request's blocks before its step completes, and check says so."""
    node = Node(Scheduler(Bounds().config()), 0, ())
    submit_next(node, Bounds())
    plan_step(node)
    node.scheduler.abort("r0")
    assert check(node) == []  # its blocks wait PENDING for step 0
    node.scheduler.pool.step_completed(0)  # the bug: settled while step 0 is still in flight
    submit_next(node, Bounds())
    plan_step(node)
    problems = check(node)
    assert any("step 0 still writes block 0 for r0 (left), but it is OWNED and held by ['r1']" in p for p in problems)


def test_main_prints_the_state_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--max-tokens", "1"]) == 0
    out = capsys.readouterr().out
    assert "explored" in out and "0 violations" in out


def test_a_copy_of_a_state_has_its_fingerprint() -> None:
    """A state and its copy must coincide, or the search never merges states and explodes instead of failing.

    (An attribute whose repr is an address, new on the scheduler, did exactly that once.)
    """
    from tokensched.testing.exhaustive import _clock, _clone, actions, fingerprint

    bounds = Bounds()
    node = Node(Scheduler(bounds.config(), policy=bounds.make_policy(), clock=_clock), 0, ())
    for _ in range(12):  # along one path of the search: submit, plan, complete, ...
        assert fingerprint(_clone(node)) == fingerprint(node)
        moves = list(actions(node, bounds))
        if not moves:
            break
        moves[-1][1](node)
    assert node.scheduler.stats().num_finished + len(node.scheduler.live) > 0
