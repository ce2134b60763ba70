"""Prints how often the state machines reached each boundary, so a rare corner is known to be covered."""

from __future__ import annotations

import pytest

from tokensched.testing.strategies import BOUNDARY_EVENTS


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not BOUNDARY_EVENTS:
        return
    terminalreporter.section("boundary events reached by the scheduler state machines")
    for name, count in sorted(BOUNDARY_EVENTS.items()):
        terminalreporter.write_line(f"{count:8d}  {name}")
