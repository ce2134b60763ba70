"""Fit the cost model's efficiency factors to step times measured on a real GPU.

Usage::

    python -m tokensched_sim.calibrate measured.csv --model kimi-k2.5 --gpu b200 --tp 4

The CSV has one measured step per row. Columns (all but ``measured_ms`` default to 0):
``num_prefill_tokens``, ``num_prefill_requests``, ``prefill_context_tokens`` (cached
tokens ahead of the prefill chunks, summed), ``num_decode_requests``,
``decode_context_tokens`` (summed context of the decode requests),
``num_speculative_tokens`` (drafts verified per decode request) and ``measured_ms``.
Other columns are ignored.

With ``x = 1 / efficiency``, a step's modelled time is
``sum_p max(C_p * x_kind(p), M_p * x_memory) + N * x_network + overhead``: piecewise
linear in the unknowns. The fit is Gauss-Newton on that form: fix which side of
each max is active, solve the linear least-squares problem (relative errors by
default, so 1 ms decodes weigh as much as 1 s prefills), keep the step only if
the true error went down, repeat until nothing changes. Efficiencies stay in
(0, 1] and the overhead non-negative; a factor no row exercises keeps its value.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from tokensched_sim.cost import ATTENTION_PHASES, PHASES, CostModel, Deployment, Efficiency, Terms
from tokensched_sim.shape import BatchShape

FACTORS = ("matmul", "attention", "memory", "network", "step_overhead_s")
HELD = ("attention_fp8", "allreduce_latency_s", "layer_overhead_s")  # not fitted; kept from the starting point
_COUNT_COLUMNS = (
    "num_prefill_tokens",
    "num_prefill_requests",
    "prefill_context_tokens",
    "num_decode_requests",
    "decode_context_tokens",
    "num_speculative_tokens",
)


@attrs.frozen(slots=True)
class Measurement:
    shape: BatchShape
    seconds: float


@attrs.frozen(slots=True)
class FitResult:
    efficiency: Efficiency
    fitted: tuple[str, ...]  # the factors the data determined
    rms_relative_error: float
    max_relative_error: float
    iterations: int


def load_measurements(path: str | Path) -> list[Measurement]:
    """Rows of a measurement CSV as batch shapes and seconds; errors name the line at fault."""
    rows: list[Measurement] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or "measured_ms" not in reader.fieldnames:
            raise ValueError(f"{path}: needs a header with a measured_ms column")
        for line, row in enumerate(reader, start=2):
            try:
                counts = {name: int(float(row[name] or 0)) for name in _COUNT_COLUMNS if name in row}
                ms = float(row["measured_ms"])
            except ValueError as exc:
                raise ValueError(f"{path}:{line}: {exc}") from None
            if ms <= 0 or any(v < 0 for v in counts.values()):
                raise ValueError(f"{path}:{line}: measured_ms must be > 0 and counts >= 0")
            shape = BatchShape.from_counts(**counts)
            if shape.num_tokens == 0:
                raise ValueError(f"{path}:{line}: a step with no tokens")
            rows.append(Measurement(shape, ms / 1e3))
    if not rows:
        raise ValueError(f"{path}: no measurements")
    return rows


def _params(e: Efficiency) -> list[float]:
    return [1 / e.matmul, 1 / e.attention, 1 / e.memory, 1 / e.network, e.step_overhead_s]


def _efficiency(theta: Sequence[float], base: Efficiency) -> Efficiency:
    return base.model_copy(
        update={
            "matmul": 1 / theta[0],
            "attention": 1 / theta[1],
            "memory": 1 / theta[2],
            "network": 1 / theta[3],
            "step_overhead_s": theta[4],
        }
    )


_KIND = [1 if name in ATTENTION_PHASES else 0 for name in PHASES]  # index into theta of each phase's compute factor


def _row(terms: Terms, theta: Sequence[float]) -> list[float]:
    """The Jacobian row at theta: coefficients of the active side of each max (the time is linear there)."""
    row = [0.0, 0.0, 0.0, terms.network_s, 1.0]
    for c, m, kind in zip(terms.compute_s, terms.memory_s, _KIND, strict=True):
        if c * theta[kind] >= m * theta[2]:
            row[kind] += c
        else:
            row[2] += m
    return row


def _modelled(terms: Terms, theta: Sequence[float], latency: float) -> float:
    row = _row(terms, theta)
    return sum(a * b for a, b in zip(row, theta, strict=True)) + latency


def _solve(a: list[list[float]], b: list[float]) -> list[float] | None:
    """Solve a small dense system by Gaussian elimination with partial pivoting; None if singular."""
    n = len(b)
    m = [[*a[i], b[i]] for i in range(n)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(m[r][col]))
        if abs(m[pivot][col]) < 1e-12:
            return None
        m[col], m[pivot] = m[pivot], m[col]
        for r in range(col + 1, n):
            f = m[r][col] / m[col][col]
            for j in range(col, n + 1):
                m[r][j] -= f * m[col][j]
    x = [0.0] * n
    for r in range(n - 1, -1, -1):
        x[r] = (m[r][n] - sum(m[r][j] * x[j] for j in range(r + 1, n))) / m[r][r]
    return x


def fit_efficiency(
    deployment: Deployment,
    measurements: Sequence[Measurement],
    *,
    fit: Sequence[str] = FACTORS,
    relative: bool = True,
    max_iterations: int = 100,
) -> FitResult:
    """Efficiency factors that best explain ``measurements`` on ``deployment`` (least squares)."""
    unknown = set(fit) - set(FACTORS)
    if unknown:
        raise ValueError(f"cannot fit {sorted(unknown)}; choose from {FACTORS}")
    model = CostModel(deployment)
    base = deployment.efficiency
    all_terms = [model.terms(m.shape) for m in measurements]
    latency = [t.num_allreduces * base.allreduce_latency_s + t.num_layers * base.layer_overhead_s for t in all_terms]
    targets = [m.seconds for m in measurements]
    weights = [1 / y if relative else 1.0 for y in targets]
    theta = _params(base)
    lower = [1.0, 1.0, 1.0, 1.0, 0.0]

    def loss(th: Sequence[float]) -> float:
        rows = zip(all_terms, latency, targets, weights, strict=True)
        return sum((w * (_modelled(t, th, lat) - y)) ** 2 for t, lat, y, w in rows)

    free = [i for i, name in enumerate(FACTORS) if name in fit]
    iterations = 0
    current = loss(theta)
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (the count is reported)
        rows = [_row(t, theta) for t in all_terms]
        active = [i for i in free if any(r[i] for r in rows)]
        proposal = _least_squares(rows, theta, active, lower, targets, latency, weights)
        if proposal is None:
            break
        step, improved = 1.0, False
        while step > 1e-6:
            trial = [a + step * (b - a) for a, b in zip(theta, proposal, strict=True)]
            trial_loss = loss(trial)
            if trial_loss < current * (1 - 1e-12):
                theta, current, improved = trial, trial_loss, True
                break
            step /= 2
        if not improved:
            break
    fitted = tuple(FACTORS[i] for i in free if any(_row(t, theta)[i] for t in all_terms))
    errors = [(_modelled(t, theta, lat) - y) / y for t, lat, y in zip(all_terms, latency, targets, strict=True)]
    return FitResult(
        efficiency=_efficiency(theta, base),
        fitted=fitted,
        rms_relative_error=math.sqrt(sum(e * e for e in errors) / len(errors)),
        max_relative_error=max(abs(e) for e in errors),
        iterations=iterations,
    )


def _least_squares(
    rows: list[list[float]],
    theta: list[float],
    active: list[int],
    lower: list[float],
    targets: list[float],
    latency: list[float],
    weights: list[float],
) -> list[float] | None:
    """Weighted linear least squares over the ``active`` parameters, the rest held; bounds by active set."""
    free = list(active)
    while free:
        fixed = [i for i in range(len(theta)) if i not in free]
        # Scale columns so a 1e-9 s/FLOP column and a 1 s overhead column are equally conditioned.
        scale = [math.sqrt(sum((w * r[i]) ** 2 for r, w in zip(rows, weights, strict=True))) or 1.0 for i in free]
        ata = [[0.0] * len(free) for _ in free]
        atb = [0.0] * len(free)
        for r, y, lat, w in zip(rows, targets, latency, weights, strict=True):
            rhs = w * (y - lat - sum(r[i] * theta[i] for i in fixed))
            cols = [w * r[i] / s for i, s in zip(free, scale, strict=True)]
            for a, ca in enumerate(cols):
                atb[a] += ca * rhs
                for b in range(a, len(cols)):
                    ata[a][b] += ca * cols[b]
        for a in range(len(free)):
            for b in range(a):
                ata[a][b] = ata[b][a]
        solution = _solve(ata, atb)
        if solution is None:
            return None
        out = list(theta)
        for i, v, s in zip(free, solution, scale, strict=True):
            out[i] = v / s
        below = [i for i in free if out[i] < lower[i]]
        if not below:
            return out
        worst = min(below, key=lambda i: out[i] - lower[i])
        theta = list(theta)
        theta[worst] = lower[worst]
        free.remove(worst)
    return list(theta)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokensched_sim.calibrate", description=__doc__.split("\n")[0])
    parser.add_argument("csv", type=Path, help="measured step times (see the module docstring for columns)")
    parser.add_argument("--model", default="kimi-k2.5", help="model preset")
    parser.add_argument("--gpu", default="b200", help="GPU preset")
    parser.add_argument("--tp", type=int, default=4, help="tensor-parallel degree")
    parser.add_argument("--kv-dtype", default=None, help="override the model's KV cache type")
    parser.add_argument("--engine", default="tokensched", help="engine profile whose efficiencies start the fit")
    parser.add_argument("--fit", default=",".join(FACTORS), help=f"comma-separated subset of {','.join(FACTORS)}")
    parser.add_argument("--absolute", action="store_true", help="minimise absolute, not relative, errors")
    args = parser.parse_args(argv)
    try:
        deployment = Deployment(model=args.model, gpu=args.gpu, tp=args.tp, kv_dtype=args.kv_dtype, engine=args.engine)
        measurements = load_measurements(args.csv)
        result = fit_efficiency(
            deployment, measurements, fit=[f for f in args.fit.split(",") if f], relative=not args.absolute
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    e = result.efficiency
    print(f"{len(measurements)} steps, {deployment.model.name} on {deployment.tp}x {deployment.gpu.name}")
    print(f"fitted: {', '.join(result.fitted) or 'nothing'} ({result.iterations} iterations)")
    for name in FACTORS:
        print(f"  {name:16s} {getattr(e, name):.6g}")
    print(f"relative error: rms {result.rms_relative_error:.2%}, max {result.max_relative_error:.2%}")
    # The fixed latencies are held (collinear with the step overhead), so the suggestion carries them too.
    values = ", ".join(f"{name}={getattr(e, name):.6g}" for name in (*FACTORS, *HELD))
    print(f"use: Deployment(..., efficiency=Efficiency({values}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
