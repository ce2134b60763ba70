"""Recorded workloads as JSON Lines: one header line, then one line per session.

A trace holds the *structure* of a run, not its token ids: when each session
starts, how many new tokens each turn adds, how long each answer is and how long
the agent thinks between turns, plus the seeds that regenerate every prompt
token. Answers are produced by the executor at replay time and fed back in, so a
replay through the same executor and policy is identical to the recorded run,
and a replay through another policy sees exactly the same demand.

Example::

    {"kind": "header", "arrival": "rate", "target_tpm": 2500000.0, ...}
    {"kind": "session", "session_id": "s000000", "start_time": 3.1, "token_seed": 42, "turns": [...]}
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tokensched.errors import TokenschedError

TRACE_VERSION: Literal[1] = 1

# Open-loop turns are sent when the previous answer would have finished at this reference speed, plus the
# turn's think time. An assumption, not a measurement: a warm turn's first token after 2 s and 50 tokens/s
# per user afterwards (below the >=70 TPS/user the published benchmark aims for, so a server that meets that
# target has answered before the agent sends its next turn). Nothing of it reaches the metrics.
REFERENCE_FIRST_TOKEN_S = 2.0
REFERENCE_SECONDS_PER_OUTPUT_TOKEN = 0.02

_Model = TypeVar("_Model", bound=BaseModel)


class TraceError(TokenschedError, ValueError):
    """A trace file that cannot be read: bad JSON, a missing header, a malformed record."""


class TurnRecord(BaseModel):
    """One turn: ``new_tokens`` appended after the previous answer, then an answer of ``output_tokens``.

    For the first turn ``new_tokens`` is the whole first prompt and ``think_time``
    is 0; for later turns ``think_time`` is the pause between the previous answer
    finishing and this turn being sent (the agent running tools, the user typing).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    new_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=1)
    think_time: float = Field(default=0.0, ge=0.0)


class SessionRecord(BaseModel):
    """One agent session: its turns and the seed of its prompt tokens.

    ``start_time`` is when its first released turn arrives. Under fixed
    concurrency only the first ``concurrency`` sessions start at their recorded
    time; each later one starts when a running session ends, and its recorded
    start is informational.

    ``join_turn`` > 0 marks a session already in progress when the run begins:
    its first request is turn ``join_turn`` with the whole conversation so far
    (earlier answers drawn from the session's token seed), and nothing of it is
    cached, as after a server restart.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["session"] = "session"
    session_id: str = Field(min_length=1)
    start_time: float | None = Field(default=None, ge=0.0)
    token_seed: int = Field(ge=0)
    join_turn: int = Field(default=0, ge=0)
    turns: tuple[TurnRecord, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> SessionRecord:
        if self.turns[0].new_tokens < 1:
            raise ValueError(f"session {self.session_id!r}: the first turn needs at least one prompt token")
        if self.join_turn >= len(self.turns):
            raise ValueError(
                f"session {self.session_id!r}: join_turn={self.join_turn} but it has {len(self.turns)} turns"
            )
        return self

    def prompt_lengths(self) -> list[int]:
        """Prompt length of each turn if every answer has its planned length (all turns, joined or not)."""
        return prompt_lengths(self.shape())

    def input_tokens(self) -> int:
        """Prompt tokens this session sends over the turns it runs (what TPM counts)."""
        return sum(self.prompt_lengths()[self.join_turn :])

    def turn_offsets(self) -> list[float]:
        """When each turn is sent, from the session's first turn, if answers take the reference time.

        Open-loop turns (``TraceHeader.turns == "open"``) are sent exactly at these
        offsets; closed-loop runs use them only to place sessions already in progress at t=0.
        """
        return turn_offsets(self.shape())

    def shape(self) -> list[TurnShape]:
        """The turns as plain (new tokens, answer tokens, think time) tuples."""
        return [(turn.new_tokens, turn.output_tokens, turn.think_time) for turn in self.turns]


TurnShape = tuple[int, int, float]
"""A turn as a plain tuple: (new tokens, answer tokens, think time), what a generator draws."""


def prompt_lengths(turns: Sequence[TurnShape]) -> list[int]:
    """Prompt length of each turn if every answer has its planned length (:meth:`SessionRecord.prompt_lengths`)."""
    lengths: list[int] = []
    context = 0
    for new_tokens, output_tokens, _ in turns:
        context += new_tokens
        lengths.append(context)
        context += output_tokens
    return lengths


def turn_offsets(turns: Sequence[TurnShape]) -> list[float]:
    """When each turn is sent at the reference speed (:meth:`SessionRecord.turn_offsets`)."""
    offsets = [0.0]
    for (_, previous_output, _), (_, _, think_time) in itertools.pairwise(turns):
        offsets.append(offsets[-1] + reference_answer_s(previous_output) + think_time)
    return offsets


def reference_answer_s(output_tokens: int) -> float:
    """How long an answer of ``output_tokens`` takes at the reference speed (first token and decode)."""
    return REFERENCE_FIRST_TOKEN_S + REFERENCE_SECONDS_PER_OUTPUT_TOKEN * output_tokens


class TraceHeader(BaseModel):
    """How sessions arrive and how their prompt tokens are made."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["header"] = "header"
    version: Literal[1] = TRACE_VERSION
    arrival: Literal["rate", "concurrency"]
    turns: Literal["closed", "open"] = Field(
        default="closed",
        description="closed: a turn is sent think_time after the previous answer finished; open: at its "
        "session's start plus SessionRecord.turn_offsets(), whether or not the previous answer is in "
        "(a replay whose load does not depend on the server)",
    )
    target_tpm: float | None = Field(default=None, gt=0.0, description="input tokens per minute (rate arrivals)")
    concurrency: int | None = Field(default=None, ge=1, description="sessions kept running (concurrency arrivals)")
    duration_s: float = Field(gt=0.0, description="no session starts and no turn is sent from this time on")
    vocab_size: int = Field(default=65_536, ge=2)
    shared_prefix_tokens: int = Field(default=0, ge=0, description="system prompt opening every session")
    shared_prefix_seed: int = Field(default=0, ge=0)
    rewrite_tail_tokens: int = Field(
        default=0, ge=0, description="tokens at the end of the previous prompt a later turn rewrites (0: none)"
    )
    max_context_tokens: int = Field(default=200_000, ge=2)
    seed: int | None = Field(default=None, description="the generator seed, if synthetic (informational)")
    rate_scale: float = Field(
        default=1.0, gt=0.0, description="session rate over the nominal Poisson rate (informational, see arrivals)"
    )

    @model_validator(mode="after")
    def _arrival_matches_its_parameter(self) -> TraceHeader:
        if self.arrival == "rate" and self.target_tpm is None:
            raise ValueError("rate arrivals need target_tpm")
        if self.arrival == "concurrency" and self.concurrency is None:
            raise ValueError("concurrency arrivals need concurrency")
        if self.arrival == "concurrency" and self.turns == "open":
            raise ValueError("open-loop turns need rate arrivals (a fixed concurrency is closed-loop by nature)")
        return self


class Trace(BaseModel):
    """A header and the sessions of one run, in start order."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    header: TraceHeader
    sessions: tuple[SessionRecord, ...] = ()

    def save(self, path: str | Path) -> None:
        write_trace(path, self.header, self.sessions)

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        header, sessions = read_trace(path)
        return cls(header=header, sessions=tuple(sessions))


def write_trace(path: str | Path, header: TraceHeader, sessions: Iterable[SessionRecord]) -> None:
    """Write ``header`` then one line per session (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        out.write(header.model_dump_json() + "\n")
        for session in sessions:
            out.write(session.model_dump_json() + "\n")


def read_trace(path: str | Path) -> tuple[TraceHeader, list[SessionRecord]]:
    """The header and the sessions of a trace file (read eagerly; errors name the line)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TraceError(f"cannot read trace {path}: {exc}") from exc
    records = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
    if not records:
        raise TraceError(f"{path}: empty trace (expected a header line)")
    number, line = records[0]
    header = _parse(TraceHeader, path, number, line)
    sessions = [_parse(SessionRecord, path, number, line) for number, line in records[1:]]
    return header, sessions


def _parse(model: type[_Model], path: Path, number: int, line: str) -> _Model:
    try:
        return model.model_validate_json(line)
    except ValidationError as exc:
        try:
            kind = json.loads(line).get("kind", "?")
        except (json.JSONDecodeError, AttributeError):
            kind = "?"
        raise TraceError(f"{path}:{number}: not a valid {model.__name__} (kind={kind!r}): {exc}") from exc
