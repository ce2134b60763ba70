"""Scheduler hot-path cost: plan() + complete() per decode step, mixed steps, and a 200k-token prefix lookup.

Prints microseconds per step and per running request. Measured the way an
engine pays it, like the harnesses in ``../shared/bench/``: garbage collector
on, the result rows built per request inside the timing, median per step; the
200k-token admissions build the ``RequestSpec`` from a list of fresh ints
inside the timing, as a server receiving the prompt would. No executor work is
timed. ``bench/compare_tokenspeed.py`` puts TokenSpeed's figures beside these.

    .venv/bin/python bench/bench_scheduler.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import random
import statistics
import time
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepPlan, StepResult


def _results_for(plan: StepPlan) -> StepResult:
    return StepResult(plan.step_id, [[7] if s else [] for s in plan.sample])


def decode_steps(num_running: int, steps: int, in_flight: int) -> float:
    """µs per plan()+complete() with ``num_running`` decoding requests, one token each."""
    max_tokens = steps * 2 + 200
    cfg = SchedulerConfig(
        num_blocks=num_running * ((20 + max_tokens) // 16 + 2) + 64,
        block_size=16,
        max_batched_tokens=max(8192, num_running * 2),
        max_running=num_running,
        max_steps_in_flight=in_flight,
        max_model_len=100_000,
    )
    s = Scheduler(cfg, clock=lambda: 0.0)
    for i in range(num_running):
        s.submit(RequestSpec(request_id=f"r{i}", prompt_token_ids=[i % 1000 + 1] * 20, max_tokens=max_tokens))
    pending: list[StepPlan] = []
    while s.stats().num_running < num_running or any(type(r.state).__name__ != "Decoding" for r in s.running.values()):
        p = s.plan()
        if p is not None:
            pending.append(p)
        s.complete(_results_for(pending.pop(0)))
    while pending:
        s.complete(_results_for(pending.pop(0)))
    gc.collect()
    times: list[float] = []
    for _ in range(steps):
        start = time.perf_counter()
        while (p := s.plan()) is not None:
            pending.append(p)
        plan = pending.pop(0)
        s.complete(StepResult(plan.step_id, [[7] if sample else [] for sample in plan.sample]))
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def mixed_steps(num_running: int, steps: int) -> float:
    """µs per step with ``num_running`` decodes plus a long prompt prefilled in 2048-token chunks."""
    cfg = SchedulerConfig(
        num_blocks=40_000, block_size=16, max_batched_tokens=2048 + num_running, max_running=num_running + 1
    )
    max_tokens = 400
    s = Scheduler(cfg, clock=lambda: 0.0)
    for i in range(num_running):
        s.submit(RequestSpec(request_id=f"r{i}", prompt_token_ids=[i + 1] * 20, max_tokens=max_tokens))
    while (s.running and len(s.running) < num_running) or s.waiting:
        p = s.plan()
        if p:
            s.complete(_results_for(p))
    rng = random.Random(0)
    s.submit(
        RequestSpec(request_id="long", prompt_token_ids=[rng.randrange(100_000) for _ in range(200_000)], max_tokens=10)
    )
    gc.collect()
    start = time.perf_counter()
    for _ in range(steps):
        p = s.plan()
        assert p is not None
        s.complete(_results_for(p))
    return (time.perf_counter() - start) / steps * 1e6


def _drain(s: Scheduler, plan: StepPlan | None) -> None:
    while s.has_work:
        if plan is not None:
            s.complete(_results_for(plan))
        plan = s.plan()


class Admission(NamedTuple):
    """ms per 200k-token admission (build the spec + submit + plan), medians."""

    session_list: float  # a session's next turn, the prompt a list of fresh ints (decoded JSON)
    session_buffer: float  # the same, the prompt a numpy int32 array (a tokenizer that returns arrays)
    unrelated: float  # the same prompt under an unrelated id: hash, look up and confirm all 12.5k blocks
    lookup: float  # the prefix lookup alone (BlockPool.match_run over kept hashes)


def prefix_admission(prompt_tokens: int, repeats: int) -> Admission:
    """ms to admit a prompt whose prefix is cached, median of ``repeats`` of each kind (see :class:`Admission`).

    Each turn's tokens are fresh int objects, as a client's decoded JSON would be;
    each turn appends 800 new tokens to the session's history.
    """
    rng = random.Random(1)
    bs = 16
    cfg = SchedulerConfig(
        num_blocks=prompt_tokens // bs * 3, block_size=bs, max_batched_tokens=8192, max_model_len=400_000
    )
    s = Scheduler(cfg, clock=lambda: 0.0)
    history = [rng.randrange(150_000) for _ in range(prompt_tokens - 801 * (2 * repeats + 1))]
    s.submit(RequestSpec(request_id="t0", prompt_token_ids=history, max_tokens=1, session_id="s"))
    _drain(s, None)
    history.append(7)  # the answer the fake results gave
    times: dict[str, list[float]] = {"list": [], "buffer": [], "fresh": [], "lookup": []}

    def admit(rid: str, prompt: list[int] | npt.NDArray[np.int32], session: str | None, kind: str) -> StepPlan:
        t0 = time.perf_counter()
        s.submit(RequestSpec(request_id=rid, prompt_token_ids=prompt, max_tokens=1, session_id=session))
        plan = s.plan()
        times[kind].append((time.perf_counter() - t0) * 1e3)
        assert plan is not None and plan.new_requests[0].num_cached_tokens >= len(history) - 2 * bs
        return plan

    for k in range(repeats):
        for kind in ("list", "buffer"):
            turn = [int(str(t)) for t in history] + [rng.randrange(150_000) for _ in range(800)]
            prompt = turn if kind == "list" else np.array(turn, dtype=np.int32)
            plan = admit(f"{kind}{k}", prompt, "s", kind)
            request = s.live[f"{kind}{k}"]
            t0 = time.perf_counter()
            s.pool.match_run(request.block_hashes, request.tokens.array, s.pool.root(None))
            times["lookup"].append((time.perf_counter() - t0) * 1e3)
            _drain(s, plan)
            history = [*turn, 7]
        fresh = [int(str(t)) for t in history[:-1]]  # new int objects, as decoded JSON would be
        _drain(s, admit(f"f{k}", fresh, None, "fresh"))
    m = {kind: statistics.median(ms) for kind, ms in times.items()}
    return Admission(m["list"], m["buffer"], m["fresh"], m["lookup"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps (CI smoke)")
    args = parser.parse_args()
    steps = 20 if args.quick else 200
    print("decode-only steps (one token per request per step)")
    print(f"{'running':>8} {'in flight':>9} {'µs/step':>10} {'µs/request':>11}")
    for n in (64, 256, 1024):
        for in_flight in (1, 2):
            us = decode_steps(n, steps, in_flight)
            print(f"{n:>8} {in_flight:>9} {us:>10.1f} {us / n:>11.2f}")
    print("\nmixed steps: decodes + a 200k-token prompt in 2048-token chunks")
    for n in (64, 256):
        us = mixed_steps(n, max(5, steps // 10))
        print(f"{n:>8} decodes: {us:>10.1f} µs/step")
    admission = prefix_admission(200_000, 2 if args.quick else 5)
    print("\n200k-token prompt with a cached prefix (ms, median of runs; spec built inside the timing)")
    print(f"  prefix lookup (hashes kept incrementally): {admission.lookup:.2f}")
    print(f"  admission, session's next turn, prompt a list of ints (submit + plan): {admission.session_list:.2f}")
    print(f"  admission, session's next turn, prompt a numpy int32 array: {admission.session_buffer:.2f}")
    print(f"  admission, unrelated id, same prompt (hash, look up, confirm 12.5k blocks): {admission.unrelated:.2f}")


if __name__ == "__main__":
    main()
