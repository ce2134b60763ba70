"""Decode runs against single steps on a bench point that once told them apart.

The default job's prefix-aware point at 4M TPM (seed 0, 240 s) has steps that
single steps plan by victim key (free blocks short) followed, once a finish
frees blocks, by steps in admission order; a run started from such a step in
flight must not keep its order. Before that was checked, this point's
``bench.json`` differed between runs and single steps. ~3 s each way.
"""

from __future__ import annotations

import pytest

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.run import run_bench
from tokensched.engine import Engine


def test_runs_give_the_single_steps_result_on_the_prefix_aware_4m_point(monkeypatch: pytest.MonkeyPatch) -> None:
    config = BenchConfig(
        policy="prefix-aware", target_tpm=4_000_000, duration_s=240, warmup_s=60, drain_s=30, kv_dtype="fp8", seed=0
    )
    with_runs, _ = run_bench(config)
    monkeypatch.setattr(Engine, "step_run", lambda self, *args, **kwargs: None)  # single steps only
    single, _ = run_bench(config)
    assert with_runs.deterministic_json() == single.deterministic_json()
