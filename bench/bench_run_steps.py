"""The simulated executor's cost per decode step of a multi-step run, without the scheduler's share.

``rows`` requests decode on the default deployment (Kimi-class on 4x B200,
EAGLE-3 with 3 drafts, as every built-in bench policy runs) through
``Engine.step_run``, one step in flight (with two, the engine keeps one in
flight and a run needs two groups, which this traffic does not make). Each ``launch_run`` is
timed, and the same cursor calls it made (``plan`` of each step launched,
``take`` of each completed) are replayed and timed alone, so the executor's
own part is the difference (CPU time, so that other processes on a shared
machine count less). Prints microseconds per step: launch_run, the
cursor's replay, and the executor's own. It uses only the public API, so the
same script measures an older checkout (``PYTHONPATH=<old checkout>``) for a
before/after.

    .venv/bin/python bench/bench_run_steps.py [steps] [--rows 1 2 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from tokensched import RequestSpec, Scheduler, SchedulerConfig
from tokensched.decode_run import DecodeRun, RunCursor, RunResult
from tokensched.engine import Engine
from tokensched_sim import SimExecutor

PROMPT = 2000


def _cursor_replay(run: DecodeRun, result: RunResult, launched: int) -> float:
    """Seconds the cursor calls of one launch_run take alone: plan every step launched, take every one completed."""
    start = time.process_time()
    cursor = RunCursor(run)
    done = len(result.sampled_token_ids)
    for j in range(launched):
        cursor.plan(j)
        if j < done:
            cursor.take(j, result.sampled_token_ids[j], result.draft_token_ids[j])
    return time.process_time() - start


def measure(rows: int, steps: int) -> tuple[float, float, int]:
    """(launch_run seconds, cursor replay seconds, steps) over about ``steps`` decode steps of runs."""
    executor = SimExecutor(output_lengths=lambda _: None, seed=1)
    config = SchedulerConfig(
        num_blocks=executor.num_kv_blocks,
        block_size=executor.block_size,
        num_speculative_tokens=executor.num_speculative_tokens,
        max_steps_in_flight=1,
    )
    engine = Engine(Scheduler(config), executor)
    for r in range(rows):
        prompt = [1 + (r * PROMPT + i) % 1000 for i in range(PROMPT)]
        engine.scheduler.submit(RequestSpec(request_id=f"r{r}", prompt_token_ids=prompt, max_tokens=200_000))
    spent = replay = 0.0
    done = 0
    launch_run = executor.launch_run

    def timed(run: DecodeRun, until: float) -> RunResult:
        nonlocal spent, replay, done
        start = time.process_time()
        result = launch_run(run, until)
        spent += time.process_time() - start
        n = len(result.sampled_token_ids)
        launched = n + run.depth - 1  # the run's last launched step(s) stay in flight
        replay += _cursor_replay(run, result, launched)
        done += n
        return result

    executor_any: Any = executor
    executor_any.launch_run = timed  # the engine looks the method up on the instance
    while done < steps:
        if engine.step_run(float("inf")) is None:
            engine.step()
    return spent, replay, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("steps", type=int, nargs="?", default=20_000)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 8])
    parser.add_argument("--repeats", type=int, default=3, help="the fastest of this many (a shared machine is noisy)")
    args = parser.parse_args()
    print(f"{'rows':>4} {'steps':>7} {'launch_run us':>14} {'cursor us':>10} {'executor us':>12}")
    for rows in args.rows:
        spent, replay, done = min(measure(rows, args.steps) for _ in range(args.repeats))
        per = 1e6 / done
        print(f"{rows:>4} {done:>7} {spent * per:>14.2f} {replay * per:>10.2f} {(spent - replay) * per:>12.2f}")


if __name__ == "__main__":
    main()
