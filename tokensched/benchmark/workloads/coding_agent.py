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

When sessions start is :mod:`tokensched.benchmark.workloads.arrivals`' business; a
session's next turn is released only when its previous answer has finished
(see :mod:`tokensched.benchmark.workloads.sessions`).
"""

from __future__ import annotations

import functools
import random

import attrs
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.benchmark.workloads.distributions import LogNormal
from tokensched.benchmark.workloads.trace import SessionRecord, TurnRecord

_ESTIMATE_SAMPLES = 4096
NOMINAL_FIRST_TOKEN_S = 2.0  # a warm turn's prefill and queueing, for placing in-progress sessions only
NOMINAL_SECONDS_PER_OUTPUT_TOKEN = 0.02  # a loaded decode step


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


class CodingAgentGenerator:
    """Samples sessions from a :class:`CodingAgentConfig` with a seeded stream.

    ``stream`` names an independent sequence for the same seed (the arrivals
    module keeps sessions already in progress at t=0 apart from new ones).
    """

    def __init__(self, config: CodingAgentConfig, seed: int, stream: str = "sessions") -> None:
        self.config = config
        self._rng = random.Random(f"tokensched/coding-agent/{stream}/{seed}")
        self._outputs = config.output_lengths()
        self._think = config.think_times()

    def sample_session(self, session_id: str, start_time: float | None = None) -> SessionRecord:
        return _sample(self.config, self._rng, self._outputs, self._think, session_id, start_time)


@attrs.frozen(slots=True)
class SessionStatistics:
    """Expectations over sessions, estimated by sampling (so clipping and the context cap count)."""

    mean_input_tokens: float  # prompt tokens a session sends over all its turns
    mean_span_s: float  # nominal first-to-last-answer time (see :func:`nominal_turn_offsets`)
    max_span_s: float


@functools.lru_cache(maxsize=32)
def session_statistics(config: CodingAgentConfig, seed: int, samples: int = _ESTIMATE_SAMPLES) -> SessionStatistics:
    """Monte Carlo over ``samples`` sessions from their own seeded stream (cached: sweeps ask again)."""
    generator = CodingAgentGenerator(config, seed, stream="estimate")
    tokens = 0
    spans = []
    for _ in range(samples):
        session = generator.sample_session("estimate")
        tokens += session.input_tokens()
        spans.append(nominal_turn_offsets(session)[-1] + _nominal_service_s(session.turns[-1].output_tokens))
    return SessionStatistics(tokens / samples, sum(spans) / samples, max(spans))


def nominal_turn_offsets(session: SessionRecord) -> list[float]:
    """When each turn would be sent, from the session's start, if answers took a nominal time.

    Only used to place sessions that are already in progress when a run begins;
    during the run answers take what the executor says.
    """
    offsets = [0.0]
    for previous, turn in zip(session.turns, session.turns[1:], strict=False):
        offsets.append(offsets[-1] + _nominal_service_s(previous.output_tokens) + turn.think_time)
    return offsets


def _nominal_service_s(output_tokens: int) -> float:
    return NOMINAL_FIRST_TOKEN_S + NOMINAL_SECONDS_PER_OUTPUT_TOKEN * output_tokens


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
    # Every field is in range by construction; skipping validation halves the cost of sampling.
    turn = TurnRecord.model_construct
    turns = [turn(new_tokens=first, output_tokens=answer, think_time=0.0)]
    context = first + answer
    for _ in range(num_turns - 1):
        new_tokens = rng.randint(config.new_tokens_min, config.new_tokens_max)
        answer = outputs.sample_int(rng)
        pause = think.sample(rng)
        if context + new_tokens + answer > config.max_context_tokens:
            break  # the agent would compact here; the session ends
        turns.append(turn(new_tokens=new_tokens, output_tokens=answer, think_time=pause))
        context += new_tokens + answer
    token_seed = rng.getrandbits(62)
    return SessionRecord(session_id=session_id, start_time=start_time, token_seed=token_seed, turns=tuple(turns))
