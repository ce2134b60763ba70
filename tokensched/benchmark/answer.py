"""The project's question: which policy serves the most input per GPU while users still get a fast service?

The operating targets are the published material's low-latency bar: p50 TTFT at
most 1 s and at least 70 tokens per second per user (median over seeds). A point
that meets both and is not overloaded *qualifies*; a policy's figure is the most
served TPM per GPU over its qualifying points (on the levels swept, so the
answer is as fine as the level grid). The answer compares tokensched's best policy
with the TensorRT-LLM-like and vLLM-like profiles on the same simulated hardware.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from rich.table import Table

from tokensched.benchmark.metrics import MaybeNaN
from tokensched.benchmark.profiles import PROFILES
from tokensched.benchmark.sweep import SweepReport, format_level

ANSWER_POLICIES = ("prefix-aware", "retain", "slo", "trtllm", "vllm")
ANSWER_LEVELS = (1e6, 2e6, 3e6, 4e6, 5e6, 6e6)
MAX_TTFT_S = 1.0
MIN_TPS_PER_USER = 70.0


class Best(BaseModel):
    """A policy's best qualifying point (``level`` NaN when none qualifies)."""

    model_config = ConfigDict(frozen=True)

    policy: str
    engine: str
    level: MaybeNaN
    served_tpm_per_gpu: MaybeNaN
    ttft_p50_s: MaybeNaN
    tps_per_user_p50: MaybeNaN


class Answer(BaseModel):
    """Each policy's best point, tokensched's winner, and its ratio to each baseline."""

    model_config = ConfigDict(frozen=True)

    max_ttft_s: float
    min_tps_per_user: float
    seeds: list[int]
    levels: list[float]
    best: list[Best]
    winner: str | None  # the tokensched policy with the most TPM/GPU
    ratios: dict[str, MaybeNaN]  # winner / baseline, per baseline profile (NaN: a side never qualified)


def find_answer(report: SweepReport, max_ttft_s: float = MAX_TTFT_S, min_tps: float = MIN_TPS_PER_USER) -> Answer:
    best = []
    for policy in report.policies:
        qualifying = [
            p
            for p in report.curve(policy)
            if not p.overloaded and p.ttft_p50_s.median <= max_ttft_s and p.tps_per_user_p50.median >= min_tps
        ]
        top = max(qualifying, key=lambda p: p.served_tpm_per_gpu, default=None)
        nan = math.nan
        best.append(
            Best(
                policy=policy,
                engine=PROFILES[policy].engine,
                level=nan if top is None else top.level,
                served_tpm_per_gpu=nan if top is None else top.served_tpm_per_gpu,
                ttft_p50_s=nan if top is None else top.ttft_p50_s.median,
                tps_per_user_p50=nan if top is None else top.tps_per_user_p50.median,
            )
        )
    ours = [b for b in best if b.engine == "tokensched" and not math.isnan(b.served_tpm_per_gpu)]
    winner = max(ours, key=lambda b: b.served_tpm_per_gpu, default=None)
    ratios = {
        b.policy: (winner.served_tpm_per_gpu / b.served_tpm_per_gpu if winner is not None else math.nan)
        for b in best
        if b.engine != "tokensched"
    }
    return Answer(
        max_ttft_s=max_ttft_s,
        min_tps_per_user=min_tps,
        seeds=report.seeds,
        levels=report.levels,
        best=best,
        winner=None if winner is None else winner.policy,
        ratios=ratios,
    )


def answer_table(answer: Answer) -> Table:
    caption = (
        f"qualifying: not overloaded, p50 TTFT <= {answer.max_ttft_s:g} s, TPS/user p50 >= "
        f"{answer.min_tps_per_user:g} (medians over {len(answer.seeds)} seeds); levels "
        f"{', '.join(map(format_level, answer.levels))}"
    )
    table = Table(title="Most served TPM per GPU within the targets", caption=caption, caption_justify="left")
    for name in ("policy", "engine", "best label", "served TPM/GPU", "TTFT p50", "TPS/user p50", "winner vs it"):
        table.add_column(name, justify="left" if name in ("policy", "engine") else "right")
    for b in answer.best:
        found = not math.isnan(b.level)
        ratio = answer.ratios.get(b.policy)
        table.add_row(
            b.policy + (" (winner)" if b.policy == answer.winner else ""),
            b.engine,
            format_level(b.level) if found else "none qualifies",
            format_level(b.served_tpm_per_gpu) if found else "-",
            f"{b.ttft_p50_s:.2f} s" if found else "-",
            f"{b.tps_per_user_p50:.0f}" if found else "-",
            "-" if ratio is None or math.isnan(ratio) else f"{ratio:.2f}x",
        )
    return table
