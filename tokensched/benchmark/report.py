"""Figures of a sweep: the two plots the published coding-agent material uses.

matplotlib is imported inside the function, with the Agg backend, so that
nothing else needs it (it is the ``bench`` extra).
"""

from __future__ import annotations

from pathlib import Path

from tokensched.benchmark.sweep import SweepReport


def plot_sweep(report: SweepReport, path: Path) -> Path:
    """Two panels: TTFT p50 against the load level, and TPS per user against served TPM per GPU.

    matplotlib is imported here, with the Agg backend, so that nothing else
    needs it (it is the ``bench`` extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (latency, interactivity) = plt.subplots(1, 2, figsize=(12, 4.8))
    styles = [("o", "-"), ("s", "--"), ("^", "-."), ("D", ":"), ("v", "-"), ("P", "--")]
    for index, policy in enumerate(report.policies):
        curve = report.curve(policy)
        if not curve:
            continue
        marker, line = styles[index % len(styles)]  # identical curves stay visible on top of each other
        style = {"marker": marker, "linestyle": line, "label": policy, "markerfacecolor": "none"}
        x = [report.level_of(r) / (1e6 if report.level_kind != "concurrency" else 1) for r in curve]
        latency.plot(x, [r.metrics.ttft_s.p50 for r in curve], **style)
        per_gpu = [r.metrics.served_tpm / r.metrics.num_gpus / 1e3 for r in curve]
        interactivity.plot(per_gpu, [r.metrics.tps_per_user.p50 for r in curve], **style)
    unit = "sessions" if report.level_kind == "concurrency" else "offered TPM (millions)"
    latency.set(xlabel=unit, ylabel="TTFT p50 (s)", title="Time to first token vs load", yscale="log")
    interactivity.set(
        xlabel="served TPM per GPU (thousands)", ylabel="TPS per user, p50", title="Interactivity vs throughput"
    )
    for axes in (latency, interactivity):
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    deployment = report.results[0].run.deployment if report.results else ""
    figure.suptitle(f"tokensched bench: coding-agent sessions, {deployment}", fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
