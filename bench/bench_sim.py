"""How fast the simulated GPU runs: simulated seconds per wall (and CPU) second, executor alone.

Replays typical plans (decode batches, chunked prefill mixed with decodes,
speculative verification) through SimExecutor.launch/collect on the
Kimi-K2.5-class on 4x B200 deployment, and prints per-step cost, per-request
cost and the ratio of modelled to CPU time (CPU time, because the machine may
be shared; wall time is printed too). No scheduler is involved: this is the
executor's share of a simulation's time.

    .venv/bin/python bench/bench_sim.py [--steps 3000]
"""

from __future__ import annotations

import argparse
import time

import attrs

from tokensched.config import SamplingParams
from tokensched.plan import NewRequestData, StepPlan
from tokensched_sim import Deployment, SimExecutor


def build_plan(step_id: int, prefill: int, decodes: int, context: int, drafts: int) -> StepPlan:
    """One prefill chunk of ``prefill`` tokens (if any) and ``decodes`` decodes at ``context`` tokens each."""
    ids, computed, offsets, tokens, sample, draft_ids = [], [], [0], [], [], []
    draft = tuple(range(1, drafts + 1))
    for i in range(decodes):
        ids.append(f"d{i}")
        computed.append(context + 37 * i)
        tokens += [5, *draft]
        offsets.append(len(tokens))
        sample.append(True)
        draft_ids.append(draft)
    if prefill:
        ids.append("p")
        computed.append(context)
        tokens += [5] * prefill
        offsets.append(len(tokens))
        sample.append(False)
        draft_ids.append(())
    return StepPlan(
        step_id=step_id,
        block_size=64,
        new_requests=(),
        removed_request_ids=(),
        request_ids=ids,
        num_computed_tokens=computed,
        token_offsets=offsets,
        token_ids=tokens,
        slot_mapping=list(range(len(tokens))),
        new_block_ids=[() for _ in ids],
        sample=sample,
        draft_token_ids=draft_ids,
    )


def bench(name: str, prefill: int, decodes: int, context: int, drafts: int, steps: int) -> None:
    executor = SimExecutor(Deployment(), block_size=64, num_speculative_tokens=drafts, seed=0)
    first = build_plan(0, prefill, decodes, context, drafts)
    new = tuple(NewRequestData(rid, [5], (), 0, 0, SamplingParams()) for rid in first.request_ids)
    plans = [attrs.evolve(first, new_requests=new)]  # every request is sent in full once
    plans += [build_plan(s, prefill, decodes, context, drafts) for s in range(1, steps)]
    start, start_cpu = time.perf_counter(), time.process_time()
    for plan in plans:
        executor.launch(plan)
        executor.collect()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    simulated = executor.now()
    per_step = cpu / steps * 1e6
    requests = plans[1].num_requests
    print(
        f"{name:36s} {simulated / steps * 1e3:7.2f} ms/step modelled  {per_step:6.1f} us/step CPU  "
        f"{per_step / requests:5.2f} us/request  {simulated / cpu:7.0f} sim-s per CPU-s  "
        f"({simulated / wall:.0f} per wall-s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args()
    print(f"Kimi-K2.5-class on 4x B200, {args.steps} steps each")
    bench("decode 16 x 60k context", 0, 16, 60_000, 0, args.steps)
    bench("decode 64 x 20k context", 0, 64, 20_000, 0, args.steps)
    bench("decode 256 x 4k context", 0, 256, 4_000, 0, args.steps)
    bench("prefill 8k chunk @100k + 32 decodes", 8192, 32, 100_000, 0, args.steps)
    bench("prefill 2k chunk @30k + 16 decodes", 2048, 16, 30_000, 0, args.steps)
    bench("speculative k=3, 64 x 20k context", 0, 64, 20_000, 3, args.steps)


if __name__ == "__main__":
    main()
