"""A stand-in for scheduler + executor: answers each request after a fixed latency, deterministically."""

from __future__ import annotations

import heapq
from collections.abc import Callable

from tokensched.benchmark.workloads import SessionWorkload
from tokensched.config import RequestSpec


def answer_tokens(request_id: str, count: int) -> list[int]:
    """A deterministic answer that differs per request (so replays can be compared token for token)."""
    base = sum(map(ord, request_id)) * 7
    return [(base + i) % 50_000 for i in range(count)]


def play(
    workload: SessionWorkload,
    latency: float = 2.0,
    until: float = float("inf"),
    observe: Callable[[float], None] | None = None,
) -> list[RequestSpec]:
    """Run ``workload`` closed-loop, each request answered ``latency`` seconds after release.

    Returns every released spec in release order; ``observe(now)`` runs after each event.
    """
    released: list[RequestSpec] = []
    answers: list[tuple[float, int, str, int]] = []  # (finish time, tie-break, request id, length)
    now = 0.0
    while True:
        candidates = [t for t in (workload.next_release_time(), answers[0][0] if answers else None) if t is not None]
        if not candidates:
            return released
        now = min(candidates)
        if now > until:
            return released
        for spec in workload.release(now):
            released.append(spec)
            length = workload.planned_output_tokens(spec.request_id)
            assert length is not None
            heapq.heappush(answers, (now + latency, len(released), spec.request_id, length))
        while answers and answers[0][0] <= now:
            _, _, request_id, length = heapq.heappop(answers)
            workload.on_finished(request_id, answer_tokens(request_id, length), now)
        if observe is not None:
            observe(now)
