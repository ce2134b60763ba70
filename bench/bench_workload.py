"""What one simulated hour costs outside the scheduler: the workload's sessions and prompts, and the metrics.

Times each piece of a one-hour run at 2.5M TPM (Kimi-K2.5-class, 4x B200,
``trtllm``) alone, as CPU seconds (the machine may be shared), the minimum of
``--repeat`` runs:

- ``session_statistics``: the 4,096 sessions drawn to set the arrival rate;
- ``CodingAgentSource``: the rate rescaling and the sessions drawn for it
  (statistics cached, as a sweep has them);
- the hour's releases: every turn's prompt and spec, each request answered
  ten seconds later with its planned length (no scheduler);
- recording: the steps of a shorter run, captured once, replayed into a fresh
  ``MetricsCollector`` through ``drive``'s ``_record``.

    .venv/bin/python bench/bench_workload.py [--repeat 3] [--record-s 900]

Run it with another checkout first on ``PYTHONPATH`` (package and
``executors/``) to compare versions (docs/performance.md, "Round four").
"""

from __future__ import annotations

import argparse
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from tokensched.benchmark import run
from tokensched.benchmark.config import BenchConfig
from tokensched.benchmark.metrics import MetricsCollector
from tokensched.benchmark.workloads import CodingAgentSource, SessionWorkload, session_statistics
from tokensched.plan import FinishReason, RequestOutput

HOUR = BenchConfig(policy="trtllm", duration_s=3_600, warmup_s=300, drain_s=30, kv_dtype="fp8")
STOP = HOUR.duration_s + HOUR.drain_s
WINDOW = (HOUR.warmup_s, HOUR.duration_s)


def best(repeat: int, piece: Callable[[], float | None]) -> float:
    """The least CPU time of ``repeat`` calls (a piece may return the time of its own timed part)."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        own = piece()
        times.append(own if own is not None else time.process_time() - start)
    return min(times)


def statistics() -> None:
    session_statistics.cache_clear()
    session_statistics(HOUR.workload, HOUR.seed)


def source() -> None:
    CodingAgentSource(HOUR.workload, HOUR.arrivals, STOP, HOUR.seed, window=WINDOW)


def releases() -> float:
    """Every turn of the hour released, each answered 10 s later; the time of the releases and answers alone."""
    workload = SessionWorkload(
        CodingAgentSource(HOUR.workload, HOUR.arrivals, STOP, HOUR.seed, window=WINDOW),
        ttft_deadline_s=HOUR.ttft_slo_s,
        eos_token_id=run.EOS_TOKEN_ID,
    )
    start = time.process_time()
    now, held = 0.0, []
    while now < STOP:
        for spec in workload.release(now):
            held.append((now + 10.0, spec.request_id, workload.planned_output_tokens(spec.request_id) or 1))
        while held and held[0][0] <= now:
            _, request_id, length = held.pop(0)
            workload.on_finished(request_id, [7] * length, now, FinishReason.STOP)
        now += 0.5
    return time.process_time() - start


Steps = list[tuple[float, list[RequestOutput]]]


def capture(duration_s: float) -> tuple[list[Steps], list[tuple[str, int, float]]]:
    """The steps ``drive`` records in a run of ``duration_s`` simulated seconds, and the arrivals."""
    calls: list[Steps] = []
    arrivals: list[tuple[str, int, float]] = []
    record, arrive = run._record, MetricsCollector.on_arrival
    grouped = _grouped()

    def keep(first: Any, *args: Any) -> None:  # (steps, ...) now, (outputs, t, ...) before
        steps: Sequence[tuple[float, Sequence[RequestOutput]]] = first if grouped else [(args[0], first)]
        calls.append([(t, [_copy(o) for o in outputs]) for t, outputs in steps])
        record(first, *args)

    def arrived(self: MetricsCollector, request_id: str, prompt: int, at: float) -> None:
        arrivals.append((request_id, prompt, at))
        arrive(self, request_id, prompt, at)

    run._record = keep  # type: ignore[assignment]
    MetricsCollector.on_arrival = arrived  # type: ignore[method-assign, assignment]
    try:
        run.run_bench(HOUR.model_copy(update={"duration_s": duration_s}))
    finally:
        run._record = record
        MetricsCollector.on_arrival = arrive  # type: ignore[method-assign]
    return calls, arrivals


def _grouped() -> bool:
    """Whether ``drive``'s ``_record`` takes several steps at once (it took one before round four)."""
    return "steps" in inspect.signature(run._record).parameters


def _copy(output: RequestOutput) -> RequestOutput:
    return RequestOutput(
        output.request_id,
        list(output.new_token_ids),
        output.finish_reason,
        None,
        output.num_output_tokens,
        output.num_cached_tokens,
        output.event,
    )


class _NoWorkload:
    def on_finished(self, *args: object) -> None:
        pass


def recording(calls: list[Steps], arrivals: list[tuple[str, int, float]]) -> float:
    metrics = run.bench_metrics(HOUR, HOUR.num_gpus)
    for arrival in arrivals:
        metrics.on_arrival(*arrival)
    answers: dict[str, list[int]] = {request_id: [] for request_id, _, _ in arrivals}
    workload: Any = _NoWorkload()
    grouped = _grouped()
    start = time.process_time()
    for steps in calls:
        if grouped:
            run._record(steps, metrics, workload, answers)
        else:  # one call a step, as drive made them before
            for t, outputs in steps:
                run._record(outputs, t, metrics, workload, answers)  # type: ignore[call-arg, arg-type]
    return time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--record-s", type=float, default=900.0, help="simulated seconds of steps to record")
    args = parser.parse_args()
    calls, arrivals = capture(args.record_s)
    steps = sum(len(c) for c in calls)
    rows = [
        ("session_statistics (4,096 sessions)", best(args.repeat, statistics)),
        ("CodingAgentSource, statistics cached", best(args.repeat, source)),
        ("releases of the hour", best(args.repeat, releases)),
        (f"recording {steps:,} steps", best(args.repeat, lambda: recording(calls, arrivals))),
    ]
    for name, seconds in rows:
        print(f"{name:<50} {seconds:7.3f} s CPU")


if __name__ == "__main__":
    main()
