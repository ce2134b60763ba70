"""The shed log: a thousand refusals are one log line per interval, not a thousand."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tokensched.server.guard import FD_RESERVE, ShedLog, connection_limit


def test_a_thousand_refusals_in_one_interval_are_one_line(caplog: pytest.LogCaptureFixture) -> None:
    async def flood() -> ShedLog:
        shed = ShedLog(interval_s=0.05)
        for _ in range(1000):
            shed.count("idle_connection_evicted")
        shed.count("connection_refused_503")
        await asyncio.sleep(0.2)  # the interval passes: its one line is written
        shed.count("header_timeout")
        shed.flush()  # at shutdown: whatever is left, now
        return shed

    with caplog.at_level(logging.WARNING, logger="tokensched.server"):
        shed = asyncio.run(flood())
    lines = [r.getMessage() for r in caplog.records if r.name == "tokensched.server"]
    assert len(lines) == 2
    assert "1000 idle connections closed to admit new ones" in lines[0]
    assert "1 connections refused with 503 (all busy)" in lines[0]
    assert "1 connections closed for not sending a request head in time" in lines[1]
    assert shed.totals["idle_connection_evicted"] == 1000


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown shed kind"):
        ShedLog(1.0).count("mystery")


def test_the_connection_limit_stays_below_the_descriptor_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert connection_limit(10) == 10 or soft - FD_RESERVE < 10
    assert connection_limit(10**9) <= max(1, soft - FD_RESERVE)
