"""Decode throughput: the FlashInfer executor against the torch executor on the same GPU.

For each batch size and context length, both executors prefill ``batch``
requests of ``context`` prompt tokens through the real scheduler, then run
``--steps`` decode-only steps one at a time (launch, collect, complete: no
overlap, so the figure is the executor's own step time). Prints decode tokens
per second and milliseconds per step for each, the speedup, and which FlashInfer
kernel served the steps. Both use the same seeded DeepSeek-shaped model
(latent 512, rope 64, 16 heads) in bfloat16.

    .venv/bin/python bench/bench_flashinfer.py [--batches 1,8,32,128] [--contexts 512,2048] [--steps 32]

Without CUDA it prints "CUDA not available, skipping" and exits 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import torch

from tokensched import RequestSpec, SchedulerConfig
from tokensched.scheduler import Scheduler
from tokensched_torch import MLAConfig, TorchExecutor


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def decode_throughput(
    executor: TorchExecutor, cfg: MLAConfig, batch: int, context: int, steps: int, warmup: int, block_size: int
) -> tuple[float, float]:
    """(decode tokens per second, milliseconds per step) over ``steps`` decode-only steps."""
    sched = Scheduler(
        SchedulerConfig(
            num_blocks=executor.num_kv_blocks,
            block_size=block_size,
            max_batched_tokens=max(8192, batch),
            max_running=max(batch, 1),
            max_steps_in_flight=1,
            enable_prefix_caching=False,
        )
    )
    rng = random.Random(batch * 100_003 + context)
    for i in range(batch):
        prompt = [rng.randrange(cfg.vocab_size) for _ in range(context)]
        sched.submit(
            RequestSpec(
                request_id=f"b{batch}-c{context}-r{i}",
                prompt_token_ids=prompt,
                max_tokens=warmup + steps + 2,
                ignore_eos=True,
            )
        )
    timed_steps, timed_tokens, elapsed = 0, 0, 0.0
    while timed_steps < steps:
        plan = sched.plan()
        if plan is None:
            raise RuntimeError(f"the scheduler stopped planning after {timed_steps} timed steps")
        decode_only = plan.num_tokens == plan.num_requests == batch
        torch.cuda.synchronize()
        started = time.perf_counter()
        executor.launch(plan)
        result = executor.collect()  # sampling reads tokens back to the host: the step is done on the GPU
        step_time = time.perf_counter() - started
        sched.complete(result)
        if decode_only:
            if warmup:
                warmup -= 1
                continue
            timed_steps += 1
            timed_tokens += plan.num_tokens
            elapsed += step_time
    return timed_tokens / elapsed, 1000 * elapsed / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=_ints, default=[1, 8, 32, 128])
    parser.add_argument("--contexts", type=_ints, default=[512, 2048])
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=64, help="64 lets Blackwell use trtllm-gen")
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--backend", default="auto", help="FlashInfer kernel: auto, trtllm-gen, fa3 or fa2")
    args = parser.parse_args(argv)

    if not torch.cuda.is_available():
        print("CUDA not available, skipping the FlashInfer decode benchmark")
        return 0
    from tokensched_flashinfer import FlashInferExecutor

    cfg = MLAConfig.deepseek_attention(num_layers=args.num_layers)
    bs = args.block_size
    tokens_needed = max(args.batches) * (max(args.contexts) + args.warmup + args.steps + 4)
    num_blocks = -(-tokens_needed * 21 // (20 * bs)) + max(args.batches) + 8  # 5% over: the scheduler keeps 1% free
    print(f"GPU: {torch.cuda.get_device_name()} (SM{''.join(map(str, torch.cuda.get_device_capability()))})")
    print(
        f"model: {cfg.num_layers} layers, {cfg.num_heads} heads, latent {cfg.kv_lora_rank}, rope {cfg.qk_rope_head_dim}"
    )
    print(
        f"block_size {bs}, {num_blocks} blocks, bfloat16; {args.steps} timed decode steps after {args.warmup} warm-up"
    )
    flash = FlashInferExecutor(cfg, num_blocks=num_blocks, block_size=bs, attention_backend=args.backend)
    reference = TorchExecutor(cfg, num_blocks=num_blocks, block_size=bs, device="cuda", dtype=torch.bfloat16)
    print(f"FlashInfer kernels for this GPU, in order: {', '.join(flash.backends)}")
    header = f"{'batch':>6} {'context':>8} {'torch tok/s':>12} {'ms/step':>8} {'flashinfer tok/s':>17} {'ms/step':>8}"
    print(header + f" {'speedup':>8}  kernel")
    for context in args.contexts:
        for batch in args.batches:
            t_tps, t_ms = decode_throughput(reference, cfg, batch, context, args.steps, args.warmup, bs)
            before = dict(flash.attention.plans)
            f_tps, f_ms = decode_throughput(flash, cfg, batch, context, args.steps, args.warmup, bs)
            used = sorted(k for k, n in flash.attention.plans.items() if n > before.get(k, 0))
            print(
                f"{batch:>6} {context:>8} {t_tps:>12.0f} {t_ms:>8.2f} {f_tps:>17.0f} {f_ms:>8.2f}"
                f" {f_tps / t_tps:>7.2f}x  {'+'.join(used)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
