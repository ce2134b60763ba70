"""When sessions start: open loop at a target TPM, or a fixed number kept running.

Under a target TPM (input tokens per minute, counted over every turn's whole
prompt, cached or not) new sessions start as a Poisson process and, by default,
their turns follow open-loop timelines (:mod:`~tokensched.benchmark.workloads.sessions`),
so the load offered does not depend on how fast the server answers. The rate is
the target divided by a session's expected input tokens; with ``window`` given,
the whole schedule is known in advance and the Poisson gaps are rescaled by one
common factor so that the prompt tokens *arriving inside the window* make
exactly the target TPM (to within one request). A load generator does the same:
it offers what the label says. The factor, near 1, is reported as ``rate_scale``.

Under fixed concurrency the first sessions start at once and each later one
when a running one ends (closed loop at the session level too).

A run that began with no session in flight would spend its first minutes
ramping up, since a session sends most of its tokens in its later turns. With
``steady_start`` it begins in steady state instead: sessions that would be in
progress at t=0 join at the turn they have reached, sending the whole
conversation so far with nothing cached, as a server sees after a restart.
Their phases come from the reference turn timeline
(:meth:`~tokensched.benchmark.workloads.trace.SessionRecord.turn_offsets`), which
open-loop turns follow exactly.

Sessions, in-progress sessions and start gaps come from separate seeded
streams, so a sweep over load levels with one seed offers the same new
sessions at each level, only closer together.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Literal

import attrs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.benchmark.workloads.coding_agent import (
    CodingAgentConfig,
    CodingAgentGenerator,
    session_record,
    session_statistics,
)
from tokensched.benchmark.workloads.offered import TurnTable
from tokensched.benchmark.workloads.trace import SessionRecord, Trace, TraceHeader, TurnShape, turn_offsets

_SCALE_RANGE = (0.25, 4.0)  # the rescaling searched; outside it the window is too short to hold the target
_BISECTIONS = 48


class Arrivals(BaseModel):
    """How sessions arrive: exactly one of ``target_tpm`` (open loop) and ``concurrency`` (closed loop)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_tpm: float | None = Field(default=None, gt=0.0, description="input tokens per minute over all turns")
    concurrency: int | None = Field(default=None, ge=1, description="sessions kept running at once")
    stagger_s: float = Field(
        default=10.0, ge=0.0, description="without steady_start, concurrent sessions start over this"
    )
    steady_start: bool = Field(default=True, description="begin with sessions in progress (cold cache) instead of none")
    turns: Literal["open", "closed"] = Field(
        default="open", description="open: turns on a fixed timeline (rate arrivals only); closed: after each answer"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> Arrivals:
        if (self.target_tpm is None) == (self.concurrency is None):
            raise ValueError("set exactly one of target_tpm and concurrency")
        return self

    @property
    def turn_timing(self) -> Literal["open", "closed"]:
        """Open-loop turns only under a target TPM (a fixed concurrency is closed-loop by nature)."""
        return self.turns if self.target_tpm is not None else "closed"


@attrs.frozen(slots=True)
class DrawnSession:
    """A session drawn for a rate schedule, before it has a start time (its record is built only if it runs)."""

    session_id: str
    gap: float  # cumulative unit-rate gap: it starts gap / rate after (or, in progress, before) t=0
    turns: list[TurnShape]
    token_seed: int

    def record(self, start_time: float, join_turn: int = 0) -> SessionRecord:
        return session_record(self.session_id, self.turns, self.token_seed, start_time, join_turn)


class CodingAgentSource:
    """Sessions in start order, for :class:`~tokensched.benchmark.workloads.sessions.SessionWorkload`.

    Under a target TPM the source ends at ``duration_s``; under fixed
    concurrency it never ends (the workload takes a session whenever one ends).
    ``window`` (start, end) is the measured window whose offered TPM is made to
    match the target (open-loop turns only; see the module docstring).
    """

    def __init__(
        self,
        config: CodingAgentConfig,
        arrivals: Arrivals,
        duration_s: float,
        seed: int,
        *,
        window: tuple[float, float] | None = None,
    ) -> None:
        self.header = TraceHeader(
            arrival="rate" if arrivals.target_tpm is not None else "concurrency",
            turns=arrivals.turn_timing,
            target_tpm=arrivals.target_tpm,
            concurrency=arrivals.concurrency,
            duration_s=duration_s,
            vocab_size=config.vocab_size,
            shared_prefix_tokens=config.shared_prefix_tokens,
            shared_prefix_seed=seed,
            rewrite_tail_tokens=config.rewrite_tail_tokens,
            max_context_tokens=config.max_context_tokens,
            seed=seed,
        )
        self._config = config
        self._seed = seed
        self._generator = CodingAgentGenerator(config, seed)
        self._arrival_rng = random.Random(f"tokensched/coding-agent/arrivals/{seed}")
        self._arrivals = arrivals
        self._duration = duration_s
        self._count = 0
        self._sessions_per_second = 0.0
        self.rate_scale = 1.0
        self._scheduled: Iterator[SessionRecord] = iter(())
        if arrivals.target_tpm is not None:
            stats = session_statistics(config, seed)
            self._sessions_per_second = arrivals.target_tpm / 60.0 / stats.mean_input_tokens
            self._horizon = 1.5 * stats.max_span_s if arrivals.steady_start else 0.0
            self._new: list[DrawnSession] = []  # by cumulative unit-rate gap
            self._old: list[DrawnSession] = []  # the same, backwards from t=0
            self._old_generator = CodingAgentGenerator(config, seed, stream="in-progress")
            self._old_rng = random.Random(f"tokensched/coding-agent/in-progress-arrivals/{seed}")
            self._tables: dict[bool, TurnTable] = {}  # in progress or not -> the drawn sessions' turns
            if window is not None and arrivals.turn_timing == "open":
                self.rate_scale = self._rescale(arrivals.target_tpm, window)
                self.header = self.header.model_copy(update={"rate_scale": self.rate_scale})
            self._scheduled = iter(self.schedule(self.rate_scale))

    @property
    def sessions_per_second(self) -> float:
        """The Poisson rate under a target TPM, rescaled (0 under fixed concurrency)."""
        return self._sessions_per_second * self.rate_scale

    def next_session(self) -> SessionRecord | None:
        if self._arrivals.concurrency is not None:
            return self._next_concurrent()
        return next(self._scheduled, None)

    def take(self, limit: int) -> Trace:
        """The first ``limit`` sessions as a trace (stops early when the source ends)."""
        return Trace(header=self.header, sessions=tuple(itertools.islice(iter(self.next_session, None), limit)))

    def offered_tokens(self, scale: float, window: tuple[float, float]) -> int:
        """Prompt tokens of the turns the schedule at ``scale`` sends inside ``window`` (open-loop turns).

        What :meth:`schedule` would send there, priced on the drawn sessions'
        turns (:mod:`~tokensched.benchmark.workloads.offered`) instead of building it.
        """
        rate = self._sessions_per_second * scale
        old = self._draw(self._old, self._horizon * rate, old=True)
        new = self._draw(self._new, self._duration * rate, old=False)
        offered = self._table(old=True).in_progress(old, rate, self._duration, window)
        return offered + self._table(old=False).new_sessions(new, rate, window)

    def _draw(self, drawn: list[DrawnSession], limit: float, *, old: bool) -> int:
        """Draws the sessions :meth:`schedule` would reach at ``limit``; returns how many start below it."""
        return sum(1 for _ in self._stream(drawn, limit, old=old))

    def _table(self, *, old: bool) -> TurnTable:
        """The turns of a stream's drawn sessions, laid out again only when more were drawn."""
        drawn = self._old if old else self._new
        table = self._tables.get(old)
        if table is None or len(table.gaps) != len(drawn):
            table = self._tables[old] = TurnTable.of([(d.gap, d.turns) for d in drawn])
        return table

    def _rescale(self, target_tpm: float, window: tuple[float, float]) -> float:
        """The common factor on the arrival rate that makes the window's offered TPM the target."""
        target = target_tpm * (window[1] - window[0]) / 60.0
        low, high = _SCALE_RANGE
        if self.offered_tokens(high, window) < target:
            return high
        if self.offered_tokens(low, window) > target:
            return low
        for _ in range(_BISECTIONS):
            middle = (low + high) / 2
            if self.offered_tokens(middle, window) < target:
                low = middle
            else:
                high = middle
        # The offered tokens jump by one request at a time: take the side nearer the target.
        below, above = self.offered_tokens(low, window), self.offered_tokens(high, window)
        return low if target - below < above - target else high

    def schedule(self, scale: float) -> list[SessionRecord]:
        """Every session of the run at ``scale``: those in progress at t=0 (joined), then new ones, by start."""
        rate = self._sessions_per_second * scale
        sessions: list[SessionRecord] = []
        for drawn in self._stream(self._old, self._horizon * rate, old=True):
            started = -drawn.gap / rate
            offsets = turn_offsets(drawn.turns)
            join = next((k for k, offset in enumerate(offsets) if started + offset >= 0), None)
            if join is None or started + offsets[join] >= self._duration:
                continue  # finished before the run, or its next turn falls after it
            sessions.append(drawn.record(started + offsets[join], join))
        for drawn in self._stream(self._new, self._duration * rate, old=False):
            sessions.append(drawn.record(drawn.gap / rate))
        sessions.sort(key=lambda s: s.start_time or 0.0)
        return sessions

    def _stream(self, drawn: list[DrawnSession], limit: float, *, old: bool) -> Iterator[DrawnSession]:
        """Sessions with cumulative unit-rate gaps below ``limit``, drawn once and kept (so every scale sees them)."""
        for index in itertools.count():
            if index == len(drawn):
                last = drawn[-1].gap if drawn else 0.0
                if last >= limit and drawn:
                    return
                rng, generator = (self._old_rng, self._old_generator) if old else (self._arrival_rng, self._generator)
                gap = last + rng.expovariate(1.0)
                turns, token_seed = generator.sample_turns()
                drawn.append(DrawnSession(f"p{index:06d}" if old else f"s{index:06d}", gap, turns, token_seed))
            session = drawn[index]
            if session.gap >= limit:
                return
            yield session

    def _next_concurrent(self) -> SessionRecord:
        if self._count >= (self._arrivals.concurrency or 0):
            return self._sample(None)  # starts when a running session ends
        if not self._arrivals.steady_start:
            return self._sample(self._arrival_rng.uniform(0.0, self._arrivals.stagger_s))
        session = self._sample(None)
        offsets = session.turn_offsets()
        elapsed = self._arrival_rng.uniform(0.0, offsets[-1])  # how far into its timeline it is at t=0
        join = next(k for k, offset in enumerate(offsets) if offset >= elapsed)
        return session.model_copy(update={"start_time": offsets[join] - elapsed, "join_turn": join})

    def _sample(self, start: float | None) -> SessionRecord:
        session = self._generator.sample_session(f"s{self._count:06d}", start)
        self._count += 1
        return session
