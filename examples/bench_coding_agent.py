"""Run the coding-agent benchmark at one load level through the library API and print the summary.

Coding-agent sessions shaped like the published benchmark (prompts growing from
~45k to 200k tokens, answers of median 293 tokens) arrive open-loop at a target
TPM on a simulated Kimi-K2.5-class model on 4x B200 with EAGLE speculation; the
scheduler runs with TensorRT-LLM-like settings or another profile. One seed, one
level: ``tokensched bench`` runs several seeds per point and sweeps levels.

    .venv/bin/python examples/bench_coding_agent.py --tpm 2.5e6 --policy prefix-aware --duration 300
"""

from __future__ import annotations

import argparse

from pydantic import ValidationError

from tokensched.benchmark import PROFILES, BenchConfig, run_bench


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the coding-agent benchmark at one load level.")
    parser.add_argument("--tpm", type=float, default=1_000_000, help="offered input tokens per minute")
    parser.add_argument("--policy", default="trtllm", choices=sorted(PROFILES))
    parser.add_argument("--duration", type=float, default=300.0, help="simulated seconds of measured arrivals")
    parser.add_argument("--warmup", type=float, default=60.0, help="simulated seconds before measuring")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    try:  # bad arguments, or a deployment that cannot start (weights do not fit), said in one line
        config = BenchConfig(
            policy=args.policy,
            target_tpm=args.tpm,
            duration_s=args.duration,
            warmup_s=args.warmup,
            drain_s=min(30.0, args.duration / 4),
            seed=args.seed,
        )
        result, trace = run_bench(config)
    except ValidationError as exc:
        raise SystemExit(f"error: {'; '.join(e['msg'] for e in exc.errors())}") from None
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    m, run = result.metrics, result.run
    print(f"{run.deployment}, policy {config.policy!r}, label {config.target_tpm:,.0f} TPM")
    print(f"  sessions started {run.sessions_started}, requests measured {m.num_requests} ({m.num_censored} censored)")
    print(f"  TTFT p50/p90/p99   {m.ttft_s.p50:.3f} / {m.ttft_s.p90:.3f} / {m.ttft_s.p99:.3f} s")
    print(f"  ITL p50            {m.itl_s.p50 * 1e3:.2f} ms;  TPS per user p50 {m.tps_per_user.p50:.0f}")
    print(f"  offered TPM        {m.tpm:,.0f} ({m.tpm_per_gpu:,.0f} per GPU); served {m.served_tpm:,.0f}")
    state = "OVERLOADED (queue still growing: TTFT depends on the window)" if m.overloaded else "steady"
    print(f"  state              {state}; TTFT trend over the window's second half {m.ttft_growth_s:+.2f} s")
    print(f"  output tok/s/GPU   {m.output_tps_per_gpu:.1f}")
    print(f"  prefix-cache hits  {m.prefix_cache_hit_rate:.1%};  preemptions {m.num_preemptions}")
    print(f"  KV usage mean      {m.kv_usage_mean:.1%};  queue length mean {m.queue_len_mean:.1f}")
    print(f"  simulated {run.sim_time_s:,.0f} s in {run.wall_s:.2f} s wall ({run.speedup:,.0f}x real time)")
    print(f"  {len(trace.sessions)} sessions recorded; trace.save('run.jsonl') would replay this run exactly")


if __name__ == "__main__":
    main()
