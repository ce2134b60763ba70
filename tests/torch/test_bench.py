"""bench/bench_torch.py runs end to end on a tiny model and prints its table (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCH = Path(__file__).resolve().parents[2] / "bench" / "bench_torch.py"


def test_bench_prints_a_row_per_batch_and_context() -> None:
    args = ["--device", "cpu", "--config", "tiny", "--batches", "1,2", "--contexts", "8,20", "--steps", "2"]
    done = subprocess.run(
        [sys.executable, str(BENCH), *args, "--threads", "1", "--block-size", "4"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [(r[0], r[1]) for r in rows] == [("1", "8"), ("2", "8"), ("1", "20"), ("2", "20")]
    assert all(float(value.replace(",", "")) > 0 for r in rows for value in r[2:])
