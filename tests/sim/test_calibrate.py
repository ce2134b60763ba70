"""Calibration recovers known efficiency factors from synthetic measurements."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from tokensched_sim import BatchShape, CostModel, Deployment, Efficiency
from tokensched_sim.calibrate import fit_efficiency, load_measurements, main

FACTORS = {"matmul": 0.45, "attention": 0.35, "memory": 0.7, "network": 0.5, "step_overhead_s": 1.2e-3}
TRUE = Efficiency(**FACTORS)  # fitted factors; the fixed latencies are the deployment's own (held, not fitted)


def write_csv(path: Path, deployment: Deployment, noise: float = 0.0, seed: int = 0) -> None:
    """Step times the cost model predicts under TRUE, for a grid of prefill/decode mixes."""
    model = CostModel(deployment.model_copy(update={"efficiency": deployment.efficiency.model_copy(update=FACTORS)}))
    rng = random.Random(seed)
    rows = []
    for prefill in (0, 256, 2048, 8192):
        for context in (0, 8000, 64000):
            for decodes in (0, 1, 16, 128):
                if not prefill and not decodes:
                    continue
                counts = {
                    "num_prefill_tokens": prefill,
                    "num_prefill_requests": 1 if prefill else 0,
                    "prefill_context_tokens": context if prefill else 0,
                    "num_decode_requests": decodes,
                    "decode_context_tokens": decodes * context,
                }
                seconds = model.step_time(BatchShape.from_counts(**counts))
                rows.append({**counts, "measured_ms": seconds * 1e3 * (1 + rng.gauss(0, noise)), "gpu_note": "x"})
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize(("model", "gpu", "tp"), [("kimi-k2.5", "b200", 4), ("dense-8b", "h100", 2)])
def test_recovers_known_factors_exactly(tmp_path: Path, model: str, gpu: str, tp: int) -> None:
    deployment = Deployment(model=model, gpu=gpu, tp=tp)  # starts from the default efficiencies
    write_csv(tmp_path / "m.csv", deployment)
    result = fit_efficiency(deployment, load_measurements(tmp_path / "m.csv"))
    for name in ("matmul", "attention", "memory", "network", "step_overhead_s"):
        assert getattr(result.efficiency, name) == pytest.approx(getattr(TRUE, name), rel=1e-6), name
    assert result.rms_relative_error < 1e-9


def test_noisy_measurements_land_near_the_truth(tmp_path: Path) -> None:
    deployment = Deployment(model="dense-8b", gpu="h100", tp=2)
    write_csv(tmp_path / "m.csv", deployment, noise=0.02, seed=4)
    e = fit_efficiency(deployment, load_measurements(tmp_path / "m.csv")).efficiency
    assert e.matmul == pytest.approx(TRUE.matmul, rel=0.1)
    assert e.memory == pytest.approx(TRUE.memory, rel=0.1)
    assert e.attention == pytest.approx(TRUE.attention, rel=0.15)


def test_factors_no_row_exercises_keep_their_value(tmp_path: Path) -> None:
    deployment = Deployment(model="dense-8b", gpu="h100", tp=1)  # no TP: nothing measures the network
    write_csv(tmp_path / "m.csv", deployment)
    result = fit_efficiency(deployment, load_measurements(tmp_path / "m.csv"))
    assert "network" not in result.fitted
    assert result.efficiency.network == deployment.efficiency.network
    assert result.efficiency.memory == pytest.approx(TRUE.memory)
    only = fit_efficiency(deployment, load_measurements(tmp_path / "m.csv"), fit=["step_overhead_s"])
    assert only.fitted == ("step_overhead_s",)
    assert only.efficiency.matmul == deployment.efficiency.matmul


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_csv(tmp_path / "m.csv", Deployment(model="dense-8b", gpu="h100", tp=2))
    assert main([str(tmp_path / "m.csv"), "--model", "dense-8b", "--gpu", "h100", "--tp", "2"]) == 0
    out = capsys.readouterr().out
    assert "matmul           0.45" in out and "memory           0.7" in out
    held = "attention_fp8=0.606367, allreduce_latency_s=8e-06, layer_overhead_s=0.00011206"
    assert f"Efficiency(matmul=0.45, attention=0.35, memory=0.7, network=0.5, step_overhead_s=0.0012, {held})" in out


def test_bad_files_are_reported_with_their_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("num_decode_requests,measured_ms\n4,2.5\nfour,3\n")
    with pytest.raises(ValueError, match=r"bad.csv:3"):
        load_measurements(bad)
    bad.write_text("num_decode_requests\n4\n")
    assert main([str(bad)]) == 2
    assert "measured_ms" in capsys.readouterr().err
    bad.write_text("num_decode_requests,measured_ms\n0,1.0\n")
    with pytest.raises(ValueError, match="no tokens"):
        load_measurements(bad)
    with pytest.raises(ValueError, match="cannot fit"):
        fit_efficiency(Deployment(), [], fit=["luck"])
