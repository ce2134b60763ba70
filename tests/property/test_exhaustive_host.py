"""Every interleaving of the real Scheduler with a one-slot host tier (tokensched.testing.exhaustive).

The bounds make the host tier do everything the scheduler asks of it: the
first request's prefix block is written back while it waits cached, the
long second request evicts it from the device, and the third request, which
shares that prefix, loads it back; a later write-back evicts the host slot.
"""

from __future__ import annotations

import pytest

from tokensched.machines.spec import load_spec
from tokensched.testing.exhaustive import Bounds, Report, explore

HOST_BOUNDS = Bounds(
    prompts=((1, 2, 3), (4, 5, 6, 7, 8, 9, 10, 11, 12), (1, 2, 7)),
    max_tokens=1,
    num_blocks=5,
    max_steps_in_flight=1,
    host_kv_blocks=1,
)


@pytest.fixture(scope="module")
def report() -> Report:
    return explore(HOST_BOUNDS)


def test_no_interleaving_with_a_host_tier_breaks_an_invariant_or_a_transfer(report: Report) -> None:
    print(report.summary())
    assert not report.violations, "\n\n".join(report.violations[:3])
    assert report.states > 500 and report.finished_states > 0, report.summary()


def test_the_search_takes_every_host_transition_the_scheduler_uses(report: Report) -> None:
    spec = load_spec("host")
    moves = {(t.source, t.target) for t in spec.transitions if t.source != t.target}
    seen = {tuple(k.split(" ", 1)[1].split("->")) for k in report.coverage if k.startswith("host ")}
    unused = {("resident", "free")}  # drop: HostTier.clear, which the scheduler never calls
    assert moves - unused <= seen, f"never exercised: {moves - unused - seen}"
    assert seen <= moves, f"the scheduler moved host slots in ways the spec has no transition for: {seen - moves}"
