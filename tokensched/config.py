"""User-facing configuration and request models, validated at the edge with pydantic.

Everything inside the scheduler trusts these values; everything outside gets a
clear :class:`pydantic.ValidationError` (or :class:`~tokensched.errors.InvalidRequest`
from :meth:`Scheduler.submit`) that names the field at fault.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, WithJsonSchema, model_validator

from tokensched.tokens import TokenIds


def _prompt_tokens(value: object) -> TokenIds:
    tokens = value if isinstance(value, TokenIds) else TokenIds(value)
    if not len(tokens):
        raise ValueError("a prompt needs at least one token")
    return tokens


PromptTokenIds = Annotated[
    # What callers may pass (so that mypy accepts the buffers the validator takes); the value is a TokenIds.
    Sequence[int] | npt.NDArray[np.integer[Any]],  # array("i") is a Sequence[int] to mypy
    PlainValidator(_prompt_tokens),
    PlainSerializer(lambda tokens: list(tokens), return_type=list[int]),
    WithJsonSchema({"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "minItems": 1}),
]
"""Prompt token ids: a list of ints, a numpy integer array or ``array("i")``, held as int32 (see tokensched.tokens)."""


class SamplingParams(BaseModel):
    """How to pick the next token. ``temperature == 0`` means greedy."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0, le=100.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=0, description="0 disables top-k")
    seed: int | None = Field(default=None, description="per-request seed for reproducible sampling")
    logprobs: bool = Field(default=False, description="return the log-probability of each sampled token")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


GREEDY = SamplingParams()


class RequestSpec(BaseModel):
    """One generation request as a caller submits it.

    ``prompt_token_ids`` may be long (200k tokens for a coding agent): pass a
    list of ints, a numpy integer array or ``array('i')``; it is converted once
    to an int32 buffer (:class:`~tokensched.tokens.TokenIds`, still a
    ``Sequence[int]``), validated vectorised, and never copied per step
    afterwards. It serialises as a list of ints.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: str = Field(min_length=1, max_length=256)
    prompt_token_ids: PromptTokenIds
    max_tokens: int = Field(default=16, ge=1)
    stop_token_ids: frozenset[int] = frozenset()
    eos_token_id: int | None = Field(default=None, ge=0)
    ignore_eos: bool = False
    priority: int = Field(default=0, description="lower runs first under the priority policy")
    session_id: str | None = Field(default=None, description="turns of one session share their prefix")
    arrival_time: float | None = Field(default=None, ge=0.0, description="defaults to the scheduler clock at submit")
    ttft_deadline: float | None = Field(default=None, gt=0.0, description="seconds after arrival (SLO policy)")
    sampling: SamplingParams = GREEDY
    cache_salt: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="requests share prefix-cached KV only with requests of the same salt (vLLM's field name); "
        "give each tenant its own so that tenants never share KV",
    )


class StepFailurePolicy(StrEnum):
    """What happens to a step's requests when the executor fails the step."""

    RETRY = "retry"  # recompute from the last applied state, up to max_step_retries
    ERROR = "error"  # finish them with reason "error"


class SchedulerConfig(BaseModel):
    """Sizes and budgets of one scheduler instance.

    The KV pool is ``num_blocks`` blocks of ``block_size`` tokens; an executor
    reports how many blocks its memory holds and the engine passes that here.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    num_blocks: int = Field(ge=1)
    block_size: int = Field(default=16, ge=1, le=4096)
    max_model_len: int = Field(default=262_144, ge=1)
    vocab_size: int | None = Field(
        default=None,
        ge=1,
        description="submit refuses a prompt, eos or stop token id at or above it (InvalidRequest naming the "
        "position); None accepts any int32 id",
    )
    max_batched_tokens: int = Field(default=8192, ge=1, description="token budget of one step")
    max_running: int = Field(default=1024, ge=1, description="requests in the running set at most")
    max_waiting: int | None = Field(default=None, ge=1, description="submit raises QueueFull beyond this")
    max_steps_in_flight: int = Field(default=2, ge=1, le=16)
    enable_prefix_caching: bool = True
    long_prefill_chunk: int | None = Field(
        default=None, ge=1, description="cap on one request's prefill tokens per step (default: the token budget)"
    )
    num_speculative_tokens: int = Field(default=0, ge=0, le=16, description="draft tokens verified per decode step")
    on_step_failure: StepFailurePolicy = StepFailurePolicy.RETRY
    max_step_retries: int = Field(default=2, ge=0)
    preemption: Literal["recompute"] = "recompute"
    max_remembered_sessions: int = Field(
        default=256,
        ge=0,
        description="sessions whose last turn (tokens and block hashes) is kept so the next turn skips rehashing; "
        "each costs about 8 bytes per token of its context",
    )
    admission_reserve: float = Field(
        default=0.01,
        ge=0.0,
        lt=1.0,
        description="fraction of the pool (at least one block when > 0) a waiting request must leave free beside "
        "its whole prompt to be admitted while others run, so running decodes can grow without preempting at once "
        "(vLLM v0's block-manager watermark, 0.01 by default)",
    )
    prefix_eviction: Literal["lru", "lfu", "cost", "pinned"] = Field(
        default="lru",
        description="which cached block is evicted first (tokensched.machines.eviction): least recently used "
        "(vLLM's order), least frequently used with ageing, cheapest to recompute relative to reuse, or LRU "
        "that never evicts pinned prefixes (Scheduler.pin_prefix)",
    )
    pinned_prefix_blocks: int = Field(
        default=0,
        ge=0,
        description="at most this many blocks of pinned prefixes stay cached (prefix_eviction='pinned')",
    )
    session_kv_retention_s: float | None = Field(
        default=None,
        gt=0.0,
        description="protect a finished turn's KV for its session's next turn this long (see tokensched.retention)",
    )
    host_kv_blocks: int = Field(
        default=0,
        ge=0,
        description="host-memory KV slots (tokensched.machines.host_tier), one block each; 0 turns the host tier "
        "off. Cached blocks about to be evicted are written back to it, and admission loads prefixes from it",
    )
    host_transfer_blocks: int = Field(
        default=64,
        ge=1,
        description="blocks copied between device and host per step at most (loads first, then write-backs), so "
        "transfers overlap a step's compute instead of stalling it",
    )
    host_eviction: Literal["lru", "lfu", "cost"] = Field(
        default="lru", description="which host slot is reused first when a write-back needs room"
    )

    @model_validator(mode="after")
    def _host_tier_needs_prefix_caching(self) -> SchedulerConfig:
        if self.host_kv_blocks and not self.enable_prefix_caching:
            raise ValueError(
                f"host_kv_blocks={self.host_kv_blocks} needs enable_prefix_caching: the host tier holds cached blocks"
            )
        return self

    @model_validator(mode="after")
    def _budget_fits_a_decode(self) -> SchedulerConfig:
        if self.max_batched_tokens < 1 + self.num_speculative_tokens:
            raise ValueError(
                f"max_batched_tokens={self.max_batched_tokens} cannot hold one decode with "
                f"{self.num_speculative_tokens} draft tokens"
            )
        return self

    @property
    def num_tokens_capacity(self) -> int:
        return self.num_blocks * self.block_size
