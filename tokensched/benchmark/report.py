"""Figures of a sweep: the two plots the published coding-agent material uses.

matplotlib is imported inside the function, with the Agg backend, so that
nothing else needs it (it is the ``bench`` extra).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokensched.benchmark.sweep import SweepReport


def plot_sweep(
    report: SweepReport,
    path: Path,
    *,
    published: Sequence[tuple[str, float, float]] = (),
    targets: tuple[float, float] | None = None,
) -> Path:
    """The two plots of the published material: p50 TTFT vs offered TPM, and TPS/user vs served TPM/GPU.

    Each point is the median over seeds; bars span the lowest to the highest
    seed. Overloaded points (queue still growing at the end of the window) are
    crossed out: their TTFT depends on the window's length. ``published`` adds
    ``(label, offered TPM, p50 TTFT)`` stars to the first plot; ``targets``
    ``(ttft_s, tps_per_user)`` draws the targets as dotted lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, interactivity) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--"), ("X", "-.")]
    concurrency = report.level_kind == "concurrency"
    for index, policy in enumerate(report.policies):
        curve = report.curve(policy)
        if not curve:
            continue
        marker, line = styles[index % len(styles)]  # identical curves stay visible on top of each other
        x = [p.level if concurrency else p.offered_tpm.median / 1e6 for p in curve]
        y = [p.ttft_p50_s.median for p in curve]
        errors = [
            [p.ttft_p50_s.median - p.ttft_p50_s.low for p in curve],
            [p.ttft_p50_s.high - p.ttft_p50_s.median for p in curve],
        ]
        drawn = latency.errorbar(
            x, y, yerr=errors, marker=marker, linestyle=line, label=policy, markerfacecolor="none", capsize=3
        )
        color = drawn[0].get_color()
        per_gpu = [p.served_tpm_per_gpu / 1e3 for p in curve]
        tps = [p.tps_per_user_p50.median for p in curve]
        interactivity.plot(per_gpu, tps, marker=marker, linestyle=line, label=policy, markerfacecolor="none")
        over = [k for k, p in enumerate(curve) if p.overloaded]
        if over:
            latency.scatter([x[k] for k in over], [y[k] for k in over], marker="x", s=90, color=color)
            interactivity.scatter([per_gpu[k] for k in over], [tps[k] for k in over], marker="x", s=90, color=color)
    for label, tpm, ttft in published:
        latency.scatter([tpm / 1e6], [ttft], marker="*", s=160, label=f"published: {label}", zorder=5)
    if targets is not None:
        latency.axhline(targets[0], linestyle=":", color="grey")
        interactivity.axhline(targets[1], linestyle=":", color="grey")
    unit = "sessions" if concurrency else "offered TPM (millions, median over seeds)"
    latency.set(xlabel=unit, ylabel="TTFT p50 (s)", title="Time to first token vs load (x: overloaded)", yscale="log")
    interactivity.set(
        xlabel="served TPM per GPU (thousands)", ylabel="TPS per user, p50", title="Interactivity vs throughput"
    )
    for axes in (latency, interactivity):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend(fontsize=8)
    deployment = report.results[0].run.deployment.split(",")[0] if report.results else ""
    figure.suptitle(f"tokensched bench: coding-agent sessions, {deployment}, {len(report.seeds)} seeds", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
