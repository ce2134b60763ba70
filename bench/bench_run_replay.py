"""What validating a decode run's result costs: the checking cursor replay against the lean pass, per step.

Runs the coding-agent bench for ``--seconds`` simulated seconds under
``--policy``, keeps every ``(DecodeRun, RunResult)`` that ``complete_run``
received, then times over all of them (best of ``--repeat`` passes, CPU time):
``reference_replay`` (a :class:`~tokensched.decode_run.RunCursor` replayed
with ``check=True``, what ``complete_run`` did before round five), ``replay``
(what it does now) and the walk an executor makes (``plan`` and ``take``
without checks). ``--before TREE`` adds the same two walks with the
``RunCursor`` of another source tree (say ``git archive 06a59cc`` unpacked
there), over the same captured runs.

    .venv/bin/python bench/bench_run_replay.py [--policy trtllm] [--seconds 930] [--repeat 7] [--before TREE]
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.run import run_bench
from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.run_replay import reference_replay, replay
from tokensched.scheduler import Scheduler

Pair = tuple[DecodeRun, RunResult]


def captured_runs(policy: str, seconds: float) -> list[Pair]:
    """Every run and result ``complete_run`` applies in a bench of ``seconds`` simulated seconds."""
    pairs: list[Pair] = []
    original = Scheduler.complete_run

    def keep(self: Scheduler, result: RunResult) -> object:
        assert self._run is not None
        pairs.append((self._run[0], result))
        return original(self, result)

    Scheduler.complete_run = keep  # type: ignore[method-assign,assignment]
    try:
        run_bench(
            BenchConfig(policy=policy, duration_s=seconds, warmup_s=min(300, seconds / 4), drain_s=30, kv_dtype="fp8")
        )
    finally:
        Scheduler.complete_run = original  # type: ignore[method-assign]
    return pairs


def executor_walk(cursor_type: Any) -> Callable[[DecodeRun, RunResult], None]:
    """The cursor calls an executor makes for a result's steps (no checks), with ``cursor_type``."""

    def walk(run: DecodeRun, result: RunResult) -> None:
        cursor = cursor_type(run)
        for j in range(run.depth):
            cursor.plan(j)
        for j, (sampled, drafts) in enumerate(zip(result.sampled_token_ids, result.draft_token_ids, strict=True)):
            if not cursor.take(j, sampled, drafts):
                break
            cursor.plan(j + run.depth)

    return walk


def checking_replay(cursor_type: Any) -> Callable[[DecodeRun, RunResult], None]:
    """The checking replay ``complete_run`` made before round five, with ``cursor_type``."""

    def check(run: DecodeRun, result: RunResult) -> None:
        cursor = cursor_type(run)
        for j in range(run.depth):
            cursor.plan(j)
        count = len(result.sampled_token_ids)
        for j in range(count):
            go_on = cursor.take(j, result.sampled_token_ids[j], result.draft_token_ids[j], check=True)
            if j < count - 1 and (not go_on or cursor.plan(j + run.depth) is None):
                raise AssertionError("a captured result the scheduler applied is refused")

    return check


def cursor_of(tree: Path) -> Any:
    """``RunCursor`` of the ``tokensched/decode_run.py`` under ``tree`` (imported beside this one)."""
    spec = importlib.util.spec_from_file_location("before_decode_run", tree / "tokensched" / "decode_run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.RunCursor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", default="trtllm")
    parser.add_argument("--seconds", type=float, default=930.0)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--before", type=Path, help="a source tree whose RunCursor to time too")
    args = parser.parse_args()
    pairs = captured_runs(args.policy, args.seconds)
    steps = sum(len(result.sampled_token_ids) for _, result in pairs)
    rows = sum(len(run.request_ids) for run, _ in pairs)
    print(f"{args.policy}: {len(pairs)} runs, {steps} steps, {rows / len(pairs):.1f} rows a run")
    timed: dict[str, Callable[[DecodeRun, RunResult], object]] = {
        "checking cursor replay (reference_replay)": reference_replay,
        "lean pass (replay)": replay,
        "executor's walk (plan + take)": executor_walk(RunCursor),
    }
    if args.before is not None:
        before = cursor_of(args.before)
        timed["before: checking cursor replay"] = checking_replay(before)
        timed["before: executor's walk"] = executor_walk(before)
    best = dict.fromkeys(timed, float("inf"))
    for _ in range(args.repeat):  # interleaved, so load on a shared machine hits all alike
        for name, fn in timed.items():
            start = time.process_time()
            for run, result in pairs:
                fn(run, result)
            best[name] = min(best[name], time.process_time() - start)
    for name, seconds in best.items():
        print(f"  {name:42s} {seconds * 1e3:7.1f} ms  {seconds / steps * 1e6:5.2f} us a step")


if __name__ == "__main__":
    main()
