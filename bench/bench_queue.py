"""Cost of keeping a long PrefixAware queue in order while the cache churns.

A queue of ``--waiting`` requests (default 2,000) of ``--prompt`` tokens
(default 50k) waits on a pool far too small for them. Their prompts share a
``--prefix``-token prefix within ``--groups`` groups, so the cache holds a few
groups' prefixes at a time: every admission of a cold group evicts another
group's blocks (shortening the cached prefix of hundreds of waiting requests),
and every prefill commits blocks that lengthen others'. Each step the queue is
topped up again, as a server under load would see it.

Prints, per step, the median and mean of ``plan()`` + ``complete()`` (the
admission's cost), and the mean ``submit()`` per request. The garbage collector
stays on. Run it on another checkout with ``PYTHONPATH=<tree>`` to compare.

    .venv/bin/python bench/bench_queue.py [--waiting 2000 --prompt 50000 --steps 200]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

import numpy as np

from tokensched import RequestSpec, Scheduler, SchedulerConfig, StepResult
from tokensched.policies import PrefixAwarePolicy


def run(waiting: int, prompt: int, prefix: int, groups: int, pool_tokens: int, steps: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    bs = 16
    heads = [rng.integers(1, 50_000, prefix, dtype=np.int32) for _ in range(groups)]
    cfg = SchedulerConfig(
        num_blocks=pool_tokens // bs,
        block_size=bs,
        max_batched_tokens=16_384,
        max_running=8,
        max_model_len=prompt + 64,
        max_steps_in_flight=1,
    )
    now = [0.0]
    s = Scheduler(cfg, policy=PrefixAwarePolicy(), clock=lambda: now[0])
    made = [0]
    submit_s = [0.0]

    def top_up() -> None:
        while len(s.waiting) < waiting:
            i = made[0]
            made[0] += 1
            tail = rng.integers(1, 50_000, prompt - prefix, dtype=np.int32)
            tokens = np.concatenate((heads[int(rng.integers(groups))], tail))
            spec = RequestSpec(request_id=f"r{i}", prompt_token_ids=tokens, max_tokens=1)
            start = time.perf_counter()
            s.submit(spec)
            submit_s[0] += time.perf_counter() - start

    top_up()
    submitted_at_start = made[0]
    submit_s[0] = 0.0
    gc.collect()
    times: list[float] = []
    admitted = 0
    for _ in range(steps):
        now[0] += 0.05
        start = time.perf_counter()
        plan = s.plan()
        if plan is not None:
            s.complete(StepResult(plan.step_id, [[7] if sample else [] for sample in plan.sample]))
        times.append(time.perf_counter() - start)
        if plan is not None:
            admitted += len(plan.new_requests)
        top_up()
    joined = made[0] - submitted_at_start
    print(
        f"{waiting} waiting x {prompt} tokens, {groups} groups sharing {prefix} tokens, pool {pool_tokens} tokens: "
        f"plan+complete median {statistics.median(times) * 1e3:.2f} ms, mean {statistics.fmean(times) * 1e3:.2f} ms "
        f"over {steps} steps ({admitted} admitted); submit mean {submit_s[0] / max(joined, 1) * 1e3:.2f} ms "
        f"over {joined} joins; hit rate {s.stats().prefix_hit_tokens / max(s.stats().prefix_query_tokens, 1):.0%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiting", type=int, default=2000)
    parser.add_argument("--prompt", type=int, default=50_000)
    parser.add_argument("--prefix", type=int, default=40_000)
    parser.add_argument("--groups", type=int, default=40)
    parser.add_argument("--pool-tokens", type=int, default=480_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    run(args.waiting, args.prompt, args.prefix, args.groups, args.pool_tokens, args.steps, args.seed)


if __name__ == "__main__":
    main()
