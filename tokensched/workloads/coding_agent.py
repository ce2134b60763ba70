"""Synthetic coding-agent sessions: long first prompts, small increments, closed-loop turns.

A session opens with a ~45-50k token prompt (system prompt, tool definitions,
the files the agent read), then runs 10-15 turns. Each later turn sends the
whole previous context back: the previous prompt, the previous answer, and
~800 new tokens (tool output, the user's message), so consecutive turns share
everything but their last few hundred tokens and a prefix cache that keeps the
session's blocks through the agent's think time skips almost all prefill.
Answers follow a clipped lognormal fitted to a mean of ~450, a median of ~293
and a p99 of ~2,230 tokens. A context that would pass 200k tokens ends the
session, as an agent would then compact or start over.

Arrivals are either open-loop sessions at a target TPM (input tokens per
minute, counted over every turn's whole prompt) or a fixed number of sessions
kept running. Either way a session's next turn is released only when its
previous answer has finished (see :mod:`tokensched.workloads.sessions`).

Sessions and their start times come from two separate seeded streams, so a
sweep over load levels with one seed offers the same sessions at each level,
only closer together.
"""

from __future__ import annotations

import random

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.workloads.distributions import LogNormal
from tokensched.workloads.trace import SessionRecord, Trace, TraceHeader, TurnRecord

_MEAN_ESTIMATE_SAMPLES = 4096


class CodingAgentConfig(BaseModel):
    """Shape of one coding-agent session. Ranges are uniform with both ends included."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_turn_min_tokens: int = Field(default=45_000, ge=1)
    first_turn_max_tokens: int = Field(default=50_000, ge=1)
    new_tokens_min: int = Field(default=600, ge=0, description="tokens a later turn adds besides the previous answer")
    new_tokens_max: int = Field(default=1_000, ge=0)
    min_turns: int = Field(default=10, ge=1)
    max_turns: int = Field(default=15, ge=1)
    output_mean: float = Field(default=450.0, gt=0.0)
    output_p50: float = Field(default=293.0, gt=0.0)
    output_p99: float = Field(default=2_230.0, gt=0.0)
    output_max_tokens: int = Field(default=16_384, ge=1, description="answers are clipped to this")
    think_time_median_s: float = Field(default=5.0, ge=0.0, description="agent/tool time between turns")
    think_time_sigma: float = Field(default=0.8, ge=0.0, description="lognormal shape of the think time")
    max_context_tokens: int = Field(default=200_000, ge=2, description="a turn whose prompt+answer passes this ends")
    shared_prefix_tokens: int = Field(default=0, ge=0, description="a system prompt common to every session")
    vocab_size: int = Field(default=65_536, ge=2)

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> CodingAgentConfig:
        for low, high in (
            ("first_turn_min_tokens", "first_turn_max_tokens"),
            ("new_tokens_min", "new_tokens_max"),
            ("min_turns", "max_turns"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(f"{low}={getattr(self, low)} exceeds {high}={getattr(self, high)}")
        if not self.output_p50 < self.output_p99:
            raise ValueError(f"output_p50={self.output_p50} must be below output_p99={self.output_p99}")
        if self.first_turn_max_tokens + 1 > self.max_context_tokens:
            raise ValueError(
                f"first_turn_max_tokens={self.first_turn_max_tokens} leaves no room for an answer "
                f"within max_context_tokens={self.max_context_tokens}"
            )
        return self

    def output_lengths(self) -> LogNormal:
        return LogNormal.fit(self.output_mean, self.output_p50, self.output_p99, low=1, high=self.output_max_tokens)

    def think_times(self) -> LogNormal:
        if self.think_time_median_s == 0:
            return LogNormal(mu=0.0, sigma=0.0, low=0.0, high=0.0)
        return LogNormal.from_median(self.think_time_median_s, self.think_time_sigma)


class Arrivals(BaseModel):
    """How sessions arrive: exactly one of ``target_tpm`` (open loop) and ``concurrency`` (closed loop)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    target_tpm: float | None = Field(default=None, gt=0.0, description="input tokens per minute over all turns")
    concurrency: int | None = Field(default=None, ge=1, description="sessions kept running at once")
    stagger_s: float = Field(default=10.0, ge=0.0, description="the first concurrent sessions start spread over this")

    @model_validator(mode="after")
    def _exactly_one(self) -> Arrivals:
        if (self.target_tpm is None) == (self.concurrency is None):
            raise ValueError("set exactly one of target_tpm and concurrency")
        return self


class CodingAgentGenerator:
    """Samples sessions from a :class:`CodingAgentConfig` with a seeded stream."""

    def __init__(self, config: CodingAgentConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(f"tokensched/coding-agent/sessions/{seed}")
        self._outputs = config.output_lengths()
        self._think = config.think_times()

    def sample_session(self, session_id: str, start_time: float | None = None) -> SessionRecord:
        return _sample(self.config, self._rng, self._outputs, self._think, session_id, start_time)

    @staticmethod
    def mean_input_tokens(config: CodingAgentConfig, seed: int, samples: int = _MEAN_ESTIMATE_SAMPLES) -> float:
        """Expected prompt tokens per session over all its turns (Monte Carlo, its own seeded stream).

        Estimated rather than derived so that clipping and the context cap are
        accounted for whatever the configuration.
        """
        rng = random.Random(f"tokensched/coding-agent/mean/{seed}")
        outputs, think = config.output_lengths(), config.think_times()
        total = sum(_sample(config, rng, outputs, think, "estimate", None).input_tokens() for _ in range(samples))
        return total / samples


def _sample(
    config: CodingAgentConfig,
    rng: random.Random,
    outputs: LogNormal,
    think: LogNormal,
    session_id: str,
    start_time: float | None,
) -> SessionRecord:
    num_turns = rng.randint(config.min_turns, config.max_turns)
    first = rng.randint(config.first_turn_min_tokens, config.first_turn_max_tokens)
    answer = min(outputs.sample_int(rng), config.max_context_tokens - first)
    turns = [TurnRecord(new_tokens=first, output_tokens=answer, think_time=0.0)]
    context = first + answer
    for _ in range(num_turns - 1):
        new_tokens = rng.randint(config.new_tokens_min, config.new_tokens_max)
        answer = outputs.sample_int(rng)
        pause = think.sample(rng)
        if context + new_tokens + answer > config.max_context_tokens:
            break  # the agent would compact here; the session ends
        turns.append(TurnRecord(new_tokens=new_tokens, output_tokens=answer, think_time=pause))
        context += new_tokens + answer
    token_seed = rng.getrandbits(62)
    return SessionRecord(session_id=session_id, start_time=start_time, token_seed=token_seed, turns=tuple(turns))


class CodingAgentSource:
    """Sessions in start order, for :class:`~tokensched.workloads.sessions.SessionWorkload`.

    Under a target TPM, sessions start as a Poisson process whose rate makes
    the expected input tokens per minute equal the target, and the source ends
    at ``duration_s``. Under fixed concurrency the first ``concurrency``
    sessions start spread over ``stagger_s`` and the source never ends (each
    later session starts when a running one ends).
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
        if arrivals.target_tpm is not None:
            per_session = CodingAgentGenerator.mean_input_tokens(config, seed)
            self._sessions_per_second = arrivals.target_tpm / 60.0 / per_session

    @property
    def sessions_per_second(self) -> float:
        """The Poisson rate under a target TPM (0 under fixed concurrency)."""
        return self._sessions_per_second

    def next_session(self) -> SessionRecord | None:
        start: float | None
        if self._arrivals.concurrency is not None:
            if self._count < self._arrivals.concurrency:
                start = self._arrival_rng.uniform(0.0, self._arrivals.stagger_s)
            else:
                start = None
        else:
            self._clock += self._arrival_rng.expovariate(self._sessions_per_second)
            if self._clock >= self._duration:
                return None
            start = self._clock
        session = self._generator.sample_session(f"s{self._count:06d}", start)
        self._count += 1
        return session

    def take(self, limit: int) -> Trace:
        """The first ``limit`` sessions as a trace (stops early when the source ends)."""
        sessions: list[SessionRecord] = []
        while len(sessions) < limit and (session := self.next_session()) is not None:
            sessions.append(session)
        return Trace(header=self.header, sessions=tuple(sessions))
