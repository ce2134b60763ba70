"""The coding-agent benchmark: workloads, policy profiles, runs over the simulated GPU, sweeps and reports.

A subsystem of its own beside the scheduler: ``import tokensched`` does not
import it (nor matplotlib, nor any executor). The pieces, in dependency order:

- :mod:`~tokensched.benchmark.workloads`: coding-agent sessions, arrivals, JSONL traces.
- :mod:`~tokensched.benchmark.metrics`: TTFT, ITL, TPS/user, TPM/GPU, cache and queue figures.
- :mod:`~tokensched.benchmark.profiles`: a policy plus the scheduler settings of the stack it mirrors.
- :mod:`~tokensched.benchmark.config`: one run's configuration (pydantic).
- :mod:`~tokensched.benchmark.run`: one scheduler + simulated engine driven by a workload.
- :mod:`~tokensched.benchmark.sweep`: every profile at every load level.
- :mod:`~tokensched.benchmark.report`: the plots.
"""

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.profiles import PROFILES, PolicyProfile
from tokensched.benchmark.run import BenchResult, RunInfo, make_deployment, run_bench
from tokensched.benchmark.sweep import SweepReport, format_level, parse_level, sweep

__all__ = [
    "PROFILES",
    "BenchConfig",
    "BenchResult",
    "PolicyProfile",
    "RunInfo",
    "SweepReport",
    "format_level",
    "make_deployment",
    "parse_level",
    "run_bench",
    "sweep",
]
