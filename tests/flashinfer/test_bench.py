"""bench/bench_flashinfer.py: skips cleanly without CUDA, and runs end to end with it (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_flashinfer.py"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_without_cuda_it_says_so_and_exits_zero() -> None:
    done = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert "CUDA not available, skipping" in done.stdout


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
def test_a_tiny_run_prints_one_row_per_batch_and_context() -> None:
    args = ["--batches", "1,4", "--contexts", "64", "--steps", "3", "--warmup", "1", "--num-layers", "1"]
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.split()[:2] in (["1", "64"], ["4", "64"])]
    assert len(rows) == 2 and all(row[6].endswith("x") for row in rows)
