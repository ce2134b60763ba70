"""When sessions start: open loop at a target TPM, or a fixed number kept running.

Under a target TPM (input tokens per minute, counted over every turn's whole
prompt) sessions start as a Poisson process whose rate makes the expected TPM
equal the target. Under fixed concurrency the first sessions start at once and
each later one when a running one ends (closed loop at the session level too).

A run that began with no session in flight would spend its first minutes
ramping up, since a session sends most of its tokens in its later turns. With
``steady_start`` it begins in steady state instead: sessions that would be in
progress at t=0 join at the turn they have reached, sending the whole
conversation so far with nothing cached, as a server sees after a restart.
Their phases come from a nominal turn timeline
(:func:`~tokensched.benchmark.workloads.coding_agent.nominal_turn_offsets`).

Sessions, in-progress sessions and start times come from separate seeded
streams, so a sweep over load levels with one seed offers the same new
sessions at each level, only closer together.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.benchmark.workloads.coding_agent import (
    CodingAgentConfig,
    CodingAgentGenerator,
    nominal_turn_offsets,
    session_statistics,
)
from tokensched.benchmark.workloads.trace import SessionRecord, Trace, TraceHeader


class Arrivals(BaseModel):
    """How sessions arrive: exactly one of ``target_tpm`` (open loop) and ``concurrency`` (closed loop)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_tpm: float | None = Field(default=None, gt=0.0, description="input tokens per minute over all turns")
    concurrency: int | None = Field(default=None, ge=1, description="sessions kept running at once")
    stagger_s: float = Field(
        default=10.0, ge=0.0, description="without steady_start, concurrent sessions start over this"
    )
    steady_start: bool = Field(default=True, description="begin with sessions in progress (cold cache) instead of none")

    @model_validator(mode="after")
    def _exactly_one(self) -> Arrivals:
        if (self.target_tpm is None) == (self.concurrency is None):
            raise ValueError("set exactly one of target_tpm and concurrency")
        return self


class CodingAgentSource:
    """Sessions in start order, for :class:`~tokensched.benchmark.workloads.sessions.SessionWorkload`.

    Under a target TPM the source ends at ``duration_s``; under fixed
    concurrency it never ends (the workload takes a session whenever one ends).
    """

    def __init__(self, config: CodingAgentConfig, arrivals: Arrivals, duration_s: float, seed: int) -> None:
        self.header = TraceHeader(
            arrival="rate" if arrivals.target_tpm is not None else "concurrency",
            target_tpm=arrivals.target_tpm,
            concurrency=arrivals.concurrency,
            duration_s=duration_s,
            vocab_size=config.vocab_size,
            shared_prefix_tokens=config.shared_prefix_tokens,
            shared_prefix_seed=seed,
            max_context_tokens=config.max_context_tokens,
            seed=seed,
        )
        self._generator = CodingAgentGenerator(config, seed)
        self._arrival_rng = random.Random(f"tokensched/coding-agent/arrivals/{seed}")
        self._arrivals = arrivals
        self._duration = duration_s
        self._count = 0
        self._clock = 0.0
        self._sessions_per_second = 0.0
        self._in_progress: list[SessionRecord] = []
        self._upcoming: SessionRecord | None = None
        if arrivals.target_tpm is not None:
            stats = session_statistics(config, seed)
            self._sessions_per_second = arrivals.target_tpm / 60.0 / stats.mean_input_tokens
            if arrivals.steady_start:
                self._in_progress = self._already_running(config, seed, horizon=2 * stats.max_span_s)
            self._upcoming = self._next_new()

    @property
    def sessions_per_second(self) -> float:
        """The Poisson rate under a target TPM (0 under fixed concurrency)."""
        return self._sessions_per_second

    @property
    def num_in_progress(self) -> int:
        """Sessions already in progress at t=0 (steady start under a target TPM)."""
        return len(self._in_progress)

    def next_session(self) -> SessionRecord | None:
        if self._arrivals.concurrency is not None:
            return self._next_concurrent()
        upcoming = self._upcoming
        if self._in_progress and (upcoming is None or (self._in_progress[-1].start_time or 0.0) <= _start(upcoming)):
            return self._in_progress.pop()
        if upcoming is not None:
            self._upcoming = self._next_new()
        return upcoming

    def take(self, limit: int) -> Trace:
        """The first ``limit`` sessions as a trace (stops early when the source ends)."""
        sessions: list[SessionRecord] = []
        while len(sessions) < limit and (session := self.next_session()) is not None:
            sessions.append(session)
        return Trace(header=self.header, sessions=tuple(sessions))

    def _next_new(self) -> SessionRecord | None:
        self._clock += self._arrival_rng.expovariate(self._sessions_per_second)
        if self._clock >= self._duration:
            return None
        return self._sample(self._clock)

    def _next_concurrent(self) -> SessionRecord:
        if self._count >= (self._arrivals.concurrency or 0):
            return self._sample(None)  # starts when a running session ends
        if not self._arrivals.steady_start:
            return self._sample(self._arrival_rng.uniform(0.0, self._arrivals.stagger_s))
        session = self._sample(None)
        offsets = nominal_turn_offsets(session)
        elapsed = self._arrival_rng.uniform(0.0, offsets[-1])  # how far into its timeline it is at t=0
        join = next(k for k, offset in enumerate(offsets) if offset >= elapsed)
        return session.model_copy(update={"start_time": offsets[join] - elapsed, "join_turn": join})

    def _sample(self, start: float | None) -> SessionRecord:
        session = self._generator.sample_session(f"s{self._count:06d}", start)
        self._count += 1
        return session

    def _already_running(self, config: CodingAgentConfig, seed: int, horizon: float) -> list[SessionRecord]:
        """Sessions that started in ``[-horizon, 0)`` and still have a turn to send, latest start last."""
        generator = CodingAgentGenerator(config, seed, stream="in-progress")
        rng = random.Random(f"tokensched/coding-agent/in-progress-arrivals/{seed}")
        sessions: list[SessionRecord] = []
        t = -horizon
        while (t := t + rng.expovariate(self._sessions_per_second)) < 0:
            session = generator.sample_session(f"p{len(sessions):06d}")
            offsets = nominal_turn_offsets(session)
            join = next((k for k, offset in enumerate(offsets) if t + offset >= 0), None)
            if join is None or t + offsets[join] >= self._duration:
                continue  # finished before the run, or its next turn falls after it
            sessions.append(session.model_copy(update={"start_time": t + offsets[join], "join_turn": join}))
        sessions.sort(key=_start, reverse=True)  # popped from the end: earliest first
        return sessions


def _start(session: SessionRecord) -> float:
    return session.start_time or 0.0
