"""A 200k-token admission in a steady-state loop: an unrelated id, then a session's turns (list and numpy input).

The harness' scheduler and prompt (``../shared/bench/tokensched_sched_overhead.py``:
200k tokens cached under request "0"), then ``repeats`` admissions of each
kind, each built from fresh int objects inside the timing (spec + submit +
plan), drained between; each session turn adds 800 tokens. Prints the
medians and minimums in ms. It uses only the public API, so the same script
measures an older checkout (``PYTHONPATH=<old checkout>``) for a before/after.

    .venv/bin/python bench/bench_admission.py [repeats] [--no-recent-runs] [--split]

``--split`` also prints where the time goes (spec built, submit, plan).
``--no-recent-runs`` turns off taking over a recently finished request's blocks,
so an unrelated id goes through the prefix index (the general path).
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import numpy as np

import tokensched.scheduler
from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepPlan, StepResult
from tokensched.config import PromptTokenIds

PAGE = 16
TOKENS = 200_000


def _complete(s: Scheduler, plan: StepPlan) -> None:
    s.complete(StepResult(plan.step_id, [[7] if x else [] for x in plan.sample]))


def _drain(s: Scheduler, plan: StepPlan | None = None) -> None:
    if plan is not None:
        _complete(s, plan)
    while s.has_work:
        if (p := s.plan()) is not None:
            _complete(s, p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repeats", nargs="?", type=int, default=7)
    parser.add_argument("--no-recent-runs", action="store_true")
    parser.add_argument("--split", action="store_true", help="also print the medians of spec, submit and plan")
    args = parser.parse_args()
    if args.no_recent_runs:
        matcher_module: types.ModuleType
        try:
            from tokensched import prompt_match as matcher_module
        except ImportError:  # a checkout from before the matcher had its own module
            matcher_module = tokensched.scheduler
        matcher_module.MIN_REUSE_BLOCKS = 1 << 62  # type: ignore[attr-defined]  # a plain ModuleType to mypy
    cfg = SchedulerConfig(
        num_blocks=2 * TOKENS // PAGE + 64, block_size=PAGE, max_batched_tokens=TOKENS + 16, max_model_len=400_000
    )
    s = Scheduler(cfg)
    prompt = [(i * 7919) % 30000 + 3 for i in range(TOKENS)]
    s.submit(RequestSpec(request_id="0", prompt_token_ids=prompt, max_tokens=1, session_id="s"))
    _drain(s)
    times: dict[str, list[float]] = {"unrelated id": [], "session turn, list": [], "session turn, numpy int32": []}
    parts: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in times}

    def admit(kind: str, rid: str, tokens: PromptTokenIds, session: str | None, cached_at_least: int) -> None:
        t0 = time.perf_counter()
        spec = RequestSpec(request_id=rid, prompt_token_ids=tokens, max_tokens=1, session_id=session)
        t1 = time.perf_counter()
        s.submit(spec)
        t2 = time.perf_counter()
        plan = s.plan()
        t3 = time.perf_counter()
        times[kind].append((t3 - t0) * 1e3)
        parts[kind].append(((t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3))
        assert plan is not None and plan.new_requests[0].num_cached_tokens >= cached_at_least
        _drain(s, plan)

    for k in range(args.repeats):
        admit("unrelated id", f"u{k}", [int(str(t)) for t in prompt] + [5], None, TOKENS)
    for kind in ("session turn, list", "session turn, numpy int32"):
        for k in range(args.repeats):
            turn = [int(str(t)) for t in prompt] + [7] + [int(str(t)) for t in range(100, 900)]
            tokens = np.array(turn, dtype=np.int32) if "numpy" in kind else turn
            admit(kind, f"{kind}{k}", tokens, "s", len(prompt) - PAGE)
            prompt = turn
    for kind, ms in times.items():
        print(f"{kind:<28} median {statistics.median(ms):6.2f} ms  min {min(ms):6.2f} ms")
    if args.split:
        print("medians of the parts, ms: spec (token conversion and validation), submit (hashes), plan (match, share)")
        for kind, split in parts.items():
            spec_ms, submit_ms, plan_ms = (statistics.median(p[i] for p in split) for i in range(3))
            print(f"  {kind:<26} spec {spec_ms:5.2f}  submit {submit_ms:5.2f}  plan {plan_ms:5.2f}")


if __name__ == "__main__":
    main()
