"""Workloads for benchmarks: synthetic coding-agent sessions and recorded JSONL traces.

A workload is played closed-loop by :class:`SessionWorkload`: the driver
submits what it releases and tells it when each request finishes, which
releases that session's next turn after its think time.
"""

from tokensched.benchmark.workloads.arrivals import Arrivals, CodingAgentSource
from tokensched.benchmark.workloads.coding_agent import (
    CodingAgentConfig,
    CodingAgentGenerator,
    SessionStatistics,
    nominal_turn_offsets,
    session_statistics,
)
from tokensched.benchmark.workloads.distributions import LogNormal
from tokensched.benchmark.workloads.sessions import (
    SessionSource,
    SessionWorkload,
    TraceSource,
    WorkloadCounts,
    prompt_tokens,
)
from tokensched.benchmark.workloads.trace import (
    SessionRecord,
    Trace,
    TraceError,
    TraceHeader,
    TurnRecord,
    read_trace,
    write_trace,
)

__all__ = [
    "Arrivals",
    "CodingAgentConfig",
    "CodingAgentGenerator",
    "CodingAgentSource",
    "LogNormal",
    "SessionRecord",
    "SessionSource",
    "SessionStatistics",
    "SessionWorkload",
    "Trace",
    "TraceError",
    "TraceHeader",
    "TraceSource",
    "TurnRecord",
    "WorkloadCounts",
    "nominal_turn_offsets",
    "prompt_tokens",
    "read_trace",
    "session_statistics",
    "write_trace",
]
