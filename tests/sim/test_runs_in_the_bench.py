"""Decode runs against single steps on bench points that tell them apart.

The default job's prefix-aware point at 4M TPM (seed 0, 240 s) has steps that
single steps plan by victim key (free blocks short) followed, once a finish
frees blocks, by steps in admission order; a run started from such a step in
flight must not keep its order. Before that was checked, this point's
``bench.json`` differed between runs and single steps. ~3 s each way. The
trtllm point at 2.5M TPM (~1 s each way) has runs of two alternating groups
(two steps in flight under speculation).
"""

from __future__ import annotations

import pytest

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.run import run_bench
from tokensched.engine import Engine


@pytest.mark.parametrize(
    ("policy", "tpm"),
    [
        ("prefix-aware", 4_000_000),
        ("trtllm", 2_500_000),  # two steps in flight under EAGLE drafts: runs of two alternating groups
    ],
)
def test_runs_give_the_single_steps_result_on_a_bench_point(
    policy: str, tpm: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BenchConfig(policy=policy, target_tpm=tpm, duration_s=240, warmup_s=60, drain_s=30, kv_dtype="fp8", seed=0)
    with_runs, _ = run_bench(config)
    monkeypatch.setattr(Engine, "step_run", lambda self, *args, **kwargs: None)  # single steps only
    single, _ = run_bench(config)
    assert with_runs.deterministic_json() == single.deterministic_json()
