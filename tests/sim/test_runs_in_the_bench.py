"""Decode runs against single steps on bench points that tell them apart.

The default job's prefix-aware point at 4M TPM (seed 0, 240 s) has steps that
single steps plan by victim key (free blocks short) followed, once a finish
frees blocks, by steps in admission order; a run started from such a step in
flight must not keep its order. Before that was checked, this point's
``bench.json`` differed between runs and single steps. ~3 s each way. The
queue and pool samples due between a run's steps are read from
``Scheduler.last_run_stats`` (a sample does not end a run), and they are part
of what must match.
"""

from __future__ import annotations

from typing import Any

import pytest

from tokensched.benchmark import run as bench_run
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.run import run_bench
from tokensched.engine import Engine


@pytest.mark.parametrize(
    ("policy", "tpm"),
    [
        ("prefix-aware", 4_000_000),
        ("trtllm", 2_500_000),  # its runs take blocks between samples: a sample read at the wrong step shows
    ],
)
def test_runs_give_the_single_steps_result_on_a_bench_point(
    policy: str, tpm: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BenchConfig(policy=policy, target_tpm=tpm, duration_s=240, warmup_s=60, drain_s=30, kv_dtype="fp8", seed=0)
    between: list[int] = []  # samples read between a run's steps (Scheduler.last_run_stats), not after one
    sample_between = bench_run._sample_between

    def counted(ran: Any, scheduler: Any, metrics: Any) -> None:
        before = metrics.next_sample_time
        sample_between(ran, scheduler, metrics)
        between.append(int(metrics.next_sample_time != before))

    monkeypatch.setattr(bench_run, "_sample_between", counted)
    with_runs, _ = run_bench(config)
    assert sum(between) > 10  # the samples inside runs are part of what is compared
    monkeypatch.setattr(Engine, "step_run", lambda self, *args, **kwargs: None)  # single steps only
    single, _ = run_bench(config)
    assert with_runs.deterministic_json() == single.deterministic_json()
