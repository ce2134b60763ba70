"""Synthetic coding-agent sessions shaped like the published benchmark: prompts growing from ~45k to ~200k.

Sources (the published coding-agent benchmark, Together AI, "Benchmarking inference at
scale: coding agents", https://together.ai/blog/coding-agent-benchmarks, 2026-05-19):
prompt lengths range from ~45k to 200k tokens, "simulating realistic coding session
growth"; answers average ~450 tokens with a median of 293 and a p99 of 2,230.

The model, and what is an assumption:

- A session opens with a 40-50k token prompt (uniform; mean 45k, the published low end).
- Each later turn sends the whole conversation back plus new tokens (tool output, files
  read, the user's message). *Assumption*: new tokens per turn are lognormal with a
  median of 3,000 and sigma 1.0 (mean ~4,900), so a session reaches the 200k cap after
  ~30 turns and its prompts cover 45k-200k evenly. The published material gives the
  range, not the per-turn increment.
- A session runs until its next turn would pass 200k tokens (the published upper end);
  an agent would compact or start over there.
- Answers: the lognormal through the published p50 (293) and p99 (2,230) tokens
  (sigma = ln(2230/293) / z_0.99 = 0.873); its mean is 429, 5% under the published ~450
  (:meth:`CodingAgentConfig.output_lengths`; checked by a test). Clipped to 16,384.
- Think time between an answer and the next turn (the agent running tools).
  *Assumption*: lognormal, median 5 s, sigma 0.8 (mean ~6.9 s, p99 ~32 s).
- A later turn extends the previous prompt exactly (*assumption*); ``rewrite_tail_tokens``
  > 0 instead rewrites that many tokens at the end of the previous prompt (its length
  unchanged), so the prefix cache hits only up to there: a sensitivity knob, off by default.

When sessions start is :mod:`tokensched.benchmark.workloads.arrivals`' business; when
a later turn is sent (open or closed loop) is :mod:`tokensched.benchmark.workloads.sessions`'.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence

import attrs
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tokensched.benchmark.workloads.distributions import LogNormal
from tokensched.benchmark.workloads.estimate import estimate_in_bulk
from tokensched.benchmark.workloads.trace import SessionRecord, TurnRecord, TurnShape, reference_answer_s

_ESTIMATE_SAMPLES = 4096


class CodingAgentConfig(BaseModel):
    """Shape of one coding-agent session. Ranges are uniform with both ends included."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    first_turn_min_tokens: int = Field(default=40_000, ge=1)
    first_turn_max_tokens: int = Field(default=50_000, ge=1)
    new_tokens_median: float = Field(
        default=3_000.0, ge=0.0, description="median tokens a later turn adds besides the previous answer"
    )
    new_tokens_sigma: float = Field(default=1.0, ge=0.0, description="lognormal shape of the new tokens per turn")
    new_tokens_max: int = Field(default=50_000, ge=0, description="new tokens per turn are clipped to this")
    min_turns: int = Field(default=1, ge=1)
    max_turns: int = Field(default=1_000, ge=1, description="by default the context cap ends a session first")
    output_p50: float = Field(default=293.0, gt=0.0, description="published median answer length")
    output_p99: float = Field(default=2_230.0, gt=0.0, description="published p99 answer length")
    output_max_tokens: int = Field(default=16_384, ge=1, description="answers are clipped to this")
    think_time_median_s: float = Field(default=5.0, ge=0.0, description="agent/tool time between turns")
    think_time_sigma: float = Field(default=0.8, ge=0.0, description="lognormal shape of the think time")
    max_context_tokens: int = Field(default=200_000, ge=2, description="a turn whose prompt+answer passes this ends")
    shared_prefix_tokens: int = Field(default=0, ge=0, description="a system prompt common to every session")
    rewrite_tail_tokens: int = Field(
        default=0,
        ge=0,
        description="assumption, for sensitivity: tokens at the end of the previous prompt a later turn rewrites "
        "(a truncated tool output, a moved reminder); 0: every turn extends the previous prompt exactly",
    )
    vocab_size: int = Field(default=65_536, ge=2)

    @model_validator(mode="after")
    def _ranges_are_ordered(self) -> CodingAgentConfig:
        for low, high in (
            ("first_turn_min_tokens", "first_turn_max_tokens"),
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
        """The lognormal through the published median and p99 (clipped to ``[1, output_max_tokens]``)."""
        return LogNormal.from_quantiles(self.output_p50, 0.99, self.output_p99, low=1, high=self.output_max_tokens)

    def new_tokens(self) -> LogNormal:
        if self.new_tokens_median == 0:
            return LogNormal(mu=0.0, sigma=0.0, low=0.0, high=0.0)
        return LogNormal.from_median(self.new_tokens_median, self.new_tokens_sigma, high=self.new_tokens_max)

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
        # LogNormal.sample(self._rng), bit for bit, without its method calls (sessions are drawn by the thousand)
        self._output = config.output_lengths().sampler(self._rng)
        self._new = config.new_tokens().sampler(self._rng)
        self._think = config.think_times().sampler(self._rng)

    def sample_session(self, session_id: str, start_time: float | None = None) -> SessionRecord:
        turns, token_seed = self.sample_turns()
        return session_record(session_id, turns, token_seed, start_time)

    def state(self) -> tuple[object, ...]:
        """Where the stream is (``random.Random.getstate()``)."""
        return self._rng.getstate()

    def sample_turns(self) -> tuple[list[TurnShape], int]:
        """The next session's draws as plain tuples: (new tokens, answer tokens, think time) per turn, token seed.

        What :meth:`sample_session` wraps in records, drawn in the same order;
        :func:`session_statistics` reads thousands of sessions and needs no records.
        """
        config, rng = self.config, self._rng
        output, new, think = self._output, self._new, self._think
        cap = config.max_context_tokens
        num_turns = rng.randint(config.min_turns, config.max_turns)
        first = rng.randint(config.first_turn_min_tokens, config.first_turn_max_tokens)
        answer = min(round(output()), cap - first)
        turns = [(first, answer, 0.0)]
        context = first + answer
        for _ in range(num_turns - 1):
            new_tokens = round(new())
            answer = round(output())
            pause = think()
            if context + new_tokens + answer > cap:
                break  # the agent would compact here; the session ends
            turns.append((new_tokens, answer, pause))
            context += new_tokens + answer
        return turns, rng.getrandbits(62)


def session_record(
    session_id: str, turns: Sequence[TurnShape], token_seed: int, start_time: float | None = None, join_turn: int = 0
) -> SessionRecord:
    """The record of a sampled session (:meth:`CodingAgentGenerator.sample_turns`) starting at ``start_time``."""
    # Every turn is in range by construction; skipping its validation halves the cost of sampling.
    turn = TurnRecord.model_construct
    records = tuple(turn(new_tokens=n, output_tokens=o, think_time=t) for n, o, t in turns)
    return SessionRecord(
        session_id=session_id, start_time=start_time, token_seed=token_seed, join_turn=join_turn, turns=records
    )


@attrs.frozen(slots=True)
class SessionStatistics:
    """Expectations over sessions, estimated by sampling (so clipping and the context cap count)."""

    mean_input_tokens: float  # prompt tokens a session sends over all its turns
    mean_span_s: float  # first turn to last answer at the reference speed (SessionRecord.turn_offsets)
    max_span_s: float
    median_prompt_tokens: float  # over every turn of every session


@functools.lru_cache(maxsize=32)
def session_statistics(config: CodingAgentConfig, seed: int, samples: int = _ESTIMATE_SAMPLES) -> SessionStatistics:
    """Monte Carlo over ``samples`` sessions from their own seeded stream (cached: sweeps ask again).

    The sessions are drawn in vectorised passes (:mod:`~tokensched.benchmark.workloads.estimate`),
    the same draws as one by one, which is checked on the first session here.
    """
    generator = CodingAgentGenerator(config, seed, stream="estimate")
    bulk = estimate_in_bulk(config, generator.state(), samples)
    if (
        bulk is not None
        and generator.sample_turns()[0] == bulk.first_session
        and generator.state() == bulk.state_after_first
    ):
        prompts = np.sort(bulk.prompts)
        return SessionStatistics(
            bulk.input_tokens / samples, sum(bulk.spans) / samples, max(bulk.spans), float(prompts[len(prompts) // 2])
        )
    return _sampled_statistics(config, seed, samples)  # not CPython's generator after all: draw one by one


def _sampled_statistics(config: CodingAgentConfig, seed: int, samples: int) -> SessionStatistics:
    """:func:`session_statistics` from sessions drawn one by one (the reference the bulk draws are checked against)."""
    generator = CodingAgentGenerator(config, seed, stream="estimate")
    tokens = 0
    spans = []
    prompts: list[int] = []
    for _ in range(samples):
        turns, _ = generator.sample_turns()
        # SessionRecord.prompt_lengths, input_tokens and turn_offsets, without building the record
        context = 0
        offset = 0.0
        previous = 0
        for index, (new_tokens, answer, pause) in enumerate(turns):
            context += new_tokens
            prompts.append(context)
            tokens += context
            context += answer
            if index:
                offset = offset + reference_answer_s(previous) + pause
            previous = answer
        spans.append(offset + reference_answer_s(previous))
    prompts.sort()
    return SessionStatistics(tokens / samples, sum(spans) / samples, max(spans), float(prompts[len(prompts) // 2]))


def nominal_turn_offsets(session: SessionRecord) -> list[float]:
    """When each turn is sent at the reference speed (:meth:`SessionRecord.turn_offsets`)."""
    return session.turn_offsets()
