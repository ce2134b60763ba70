"""Which parallel shape serves Kimi-K2.5 best at a given per-user speed, as the cost model sees it.

For each shape (attention TP or DP x MoE TP or EP) on the same GPUs, sweeps the
decode batch and prints the highest output throughput per GPU whose per-user
speed meets each target, plus the KV tokens each shape holds. Nothing here is
tuned to the published finding (Attention TP4 + MoE TP4 best above ~70
TPS/user); the table is whatever the model gives.

    .venv/bin/python bench/sim_shapes.py [--gpu b200] [--tp 4] [--context 100000] [--drafts 3]
"""

from __future__ import annotations

import argparse

from tokensched_sim import CostModel, Deployment, DeploymentError
from tokensched_sim.draft import KIMI_EAGLE3_ACCEPT_LENGTH, KIMI_EAGLE3_NUM_DRAFTS, acceptance_rate_for_length
from tokensched_sim.operating import best_at_speed, max_batch

SHAPES = (("tp", "tp"), ("tp", "ep"), ("dp", "tp"), ("dp", "ep"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="kimi-k2.5")
    parser.add_argument("--gpu", default="b200")
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument("--engine", default="tokensched")
    parser.add_argument("--context", type=int, default=100_000, help="tokens of context per decoding request")
    parser.add_argument("--drafts", type=int, default=3, help="speculative tokens (0: none)")
    parser.add_argument("--speeds", default="20,40,70,100,150,200", help="TPS/user targets")
    args = parser.parse_args()
    alpha = acceptance_rate_for_length(KIMI_EAGLE3_ACCEPT_LENGTH, KIMI_EAGLE3_NUM_DRAFTS)
    speeds = [float(s) for s in args.speeds.split(",")]
    print(
        f"{args.model} on {args.tp}x {args.gpu}, {args.engine}, FP8 KV, {args.context:,}-token contexts, "
        f"{args.drafts} drafts at acceptance {alpha:.3f}; output tok/s per GPU at >= the TPS/user heading"
    )
    print(f"{'attn/moe':>9} {'KV tokens':>10} {'max batch':>9} " + " ".join(f"{s:>9.0f}" for s in speeds))
    for attention, moe in SHAPES:
        try:
            model = CostModel(
                Deployment(
                    model=args.model,
                    gpu=args.gpu,
                    tp=args.tp,
                    kv_dtype="fp8",
                    engine=args.engine,
                    attention=attention,
                    moe=moe,
                    num_speculative_tokens=args.drafts,
                )
            )
        except DeploymentError as exc:
            print(f"{attention:>4}/{moe:<4} {exc}")
            continue
        cells = []
        for speed in speeds:
            point = best_at_speed(model, args.context, speed, alpha)
            cells.append(f"{point.tokens_per_s_per_gpu:>9.0f}" if point else f"{'-':>9}")
        kv = model.memory_breakdown().kv_tokens
        print(f"{attention:>4}/{moe:<4} {kv:>10,} {max_batch(model, args.context):>9} " + " ".join(cells))


if __name__ == "__main__":
    main()
