"""Prefill and decode throughput of the torch MLA executor, through the real scheduler.

For each batch size and context length:

- prefill: ``batch`` requests of ``context`` random prompt tokens and
  ``max_tokens=1`` run to completion (chunked at ``--chunk`` tokens per step);
  the figure is prompt tokens per second of step time;
- decode: the same prompts again under new ids (prefix-cache hits, so only the
  last partial block is recomputed), then ``--steps`` decode-only steps one at
  a time (launch, collect, complete; no overlap, so the figure is the
  executor's own step time): tokens per second and milliseconds per step.

On CPU the default model is ``MLAConfig.small()`` in float32; on CUDA (when
available, or with ``--device cuda``) DeepSeek-V3's attention shapes in
bfloat16. Weights are seeded and random; nothing is downloaded. On a machine
whose cores are shared with other work, pass ``--threads 1``: torch's intra-op
threads spin-wait, and oversubscribed they make small-batch steps ~10x slower.

    .venv/bin/python bench/bench_torch.py [--device cpu|cuda|all] [--batches 1,4,16] [--contexts 128,512,2048]
        [--steps 16] [--threads N]
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from tokensched import RequestSpec, SchedulerConfig
from tokensched.scheduler import Scheduler
from tokensched_torch import MLAConfig, TorchExecutor

DEFAULTS = {
    "cpu": {"batches": "1,4,16", "contexts": "128,512,2048", "config": "small", "dtype": "float32"},
    "cuda": {"batches": "1,8,32,128", "contexts": "512,2048,8192", "config": "deepseek", "dtype": "bfloat16"},
}
CONFIGS = {"tiny": MLAConfig.tiny, "small": MLAConfig.small, "deepseek": MLAConfig.deepseek_attention}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def _run_step(sched: Scheduler, executor: TorchExecutor) -> tuple[float, int, bool]:
    """Plan, run and apply one step: (seconds, tokens in the step, whether it was decode-only)."""
    plan = sched.plan()
    assert plan is not None
    started = time.perf_counter()
    executor.launch(plan)
    result = executor.collect()
    elapsed = time.perf_counter() - started
    sched.complete(result)
    return elapsed, plan.num_tokens, plan.num_tokens == plan.num_requests


def measure(
    executor: TorchExecutor, cfg: MLAConfig, batch: int, context: int, steps: int, chunk: int
) -> tuple[float, float, float]:
    """(prefill tokens/s, decode tokens/s, ms per decode step) for one batch size and context length."""
    sched = Scheduler(
        SchedulerConfig(
            num_blocks=executor.num_kv_blocks,
            block_size=executor.block_size,
            max_batched_tokens=max(chunk, batch),
            max_running=batch,
            max_steps_in_flight=1,
        )
    )
    rng = random.Random(batch * 100_003 + context)
    prompts = [[rng.randrange(cfg.vocab_size) for _ in range(context)] for _ in range(batch)]
    for i, prompt in enumerate(prompts):
        sched.submit(RequestSpec(request_id=f"p{i}", prompt_token_ids=prompt, max_tokens=1, ignore_eos=True))
    prefill_time, prefill_tokens = 0.0, 0
    while sched.has_work:
        elapsed, tokens, _ = _run_step(sched, executor)
        prefill_time += elapsed
        prefill_tokens += tokens
    warmup = 2
    for i, prompt in enumerate(prompts):
        spec = RequestSpec(request_id=f"d{i}", prompt_token_ids=prompt, max_tokens=warmup + steps + 2, ignore_eos=True)
        sched.submit(spec)
    decode_time, decode_tokens, decode_steps, seen = 0.0, 0, 0, 0
    while decode_steps < steps and sched.has_work:
        elapsed, tokens, decode_only = _run_step(sched, executor)
        if decode_only and tokens == batch:
            seen += 1
            if seen > warmup:  # skip the first steps (allocator and cache warm-up)
                decode_time += elapsed
                decode_tokens += tokens
                decode_steps += 1
    return prefill_tokens / prefill_time, decode_tokens / decode_time, 1000 * decode_time / max(decode_steps, 1)


def bench_device(device: str, args: argparse.Namespace) -> None:
    defaults = DEFAULTS[device]
    batches = _ints(args.batches or defaults["batches"])
    contexts = _ints(args.contexts or defaults["contexts"])
    cfg = CONFIGS[args.config or defaults["config"]]()
    dtype = args.dtype or defaults["dtype"]
    blocks_per_request = -(-(max(contexts) + args.steps + 8) // args.block_size)
    num_blocks = 2 * max(batches) * blocks_per_request + 8
    executor = TorchExecutor(cfg, num_blocks=num_blocks, block_size=args.block_size, device=device, dtype=dtype)
    params = sum(p.numel() for p in executor.model.parameters()) / 1e6
    print(
        f"\n{device}: {params:.1f}M-parameter MLA model ({cfg.num_layers} layers, hidden {cfg.hidden_size}, "
        f"{cfg.num_heads} heads, latent {cfg.kv_lora_rank}, rope {cfg.qk_rope_head_dim}), {dtype}, "
        f"block size {args.block_size}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'batch':>6} {'context':>8} {'prefill tok/s':>14} {'decode tok/s':>13} {'ms/decode step':>15}")
    for context in contexts:
        for batch in batches:
            prefill, decode, ms = measure(executor, cfg, batch, context, args.steps, args.chunk)
            print(f"{batch:>6} {context:>8} {prefill:>14,.0f} {decode:>13,.0f} {ms:>15.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all")
    parser.add_argument("--batches", help="comma-separated batch sizes (default per device)")
    parser.add_argument("--contexts", help="comma-separated context lengths (default per device)")
    parser.add_argument("--config", choices=sorted(CONFIGS), help="model shape (default per device)")
    parser.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=16, help="timed decode steps")
    parser.add_argument("--chunk", type=int, default=8192, help="token budget per step (prefill chunk)")
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.device == "all" else [args.device]
    for device in devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\ncuda: not available, skipping")
            continue
        bench_device(device, args)


if __name__ == "__main__":
    main()
