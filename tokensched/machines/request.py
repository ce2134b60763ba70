"""The request lifecycle machine: each state is a class that owns exactly its resources.

::

    Waiting ──admit──▶ Prefilling ──first_token──▶ Decoding ──finish──▶ Finished(reason)
       │                  │  ▲                        │
       │                  │  └──────── resume ────────┼──── Preempted ◀──preempt──┘ (and from Prefilling)
       └──abort──▶ Finished(abort)   (abort from every live state)

- :class:`Waiting` holds no KV blocks.
- :class:`Prefilling` holds its block table and its prefill cursor.
- :class:`Decoding` holds its block table and its generation cursor.
- :class:`Preempted` has released its KV; it keeps nothing but the count, and
  will recompute its prompt and outputs when resumed.
- :class:`Finished` carries the reason.

The token history (prompt, then outputs, in an int32
:class:`~tokensched.tokens.TokenBuffer`) lives on :class:`Request` rather than
in a state, because every state needs it: a preempted request recomputes it,
a finished one reports it.

Transitions are :data:`TRANSITIONS` (checked against ``specs/request.toml`` by
a test) and go through :func:`transition`, which refuses an event the current
state has no arrow for with :class:`IllegalTransition`. Appending a decoded
token is a self-loop on Decoding and, for speed, mutates the state in place.
"""

from __future__ import annotations

from typing import assert_never

import attrs
import numpy as np
import numpy.typing as npt

from tokensched.config import RequestSpec, SamplingParams
from tokensched.errors import IllegalTransition
from tokensched.plan import FinishReason
from tokensched.tokens import Int32Array, TokenBuffer, TokenIds, as_token_array

Int64Array = npt.NDArray[np.int64]


def prompt_array(prompt: object) -> Int32Array:
    """The validated int32 array behind a spec's prompt (converted here only if it bypassed validation)."""
    return prompt.array if isinstance(prompt, TokenIds) else as_token_array(prompt)


@attrs.frozen(slots=True)
class Waiting:
    """Queued for admission; holds no blocks."""


@attrs.define(slots=True)
class Prefilling:
    """Computing its prompt (or, after a preemption, prompt and outputs) in chunks.

    ``num_computed`` tokens have KV (applied results); ``num_scheduled`` counts
    those plus tokens in steps still in flight. ``num_cached`` came from the
    prefix cache at admission.
    """

    blocks: list[int]
    num_computed: int
    num_scheduled: int
    num_cached: int
    num_committed: int  # leading blocks committed to the prefix cache


@attrs.define(slots=True)
class Decoding:
    """Generating; one position (plus drafts) per step."""

    blocks: list[int]
    num_computed: int
    num_scheduled: int
    num_cached: int
    num_committed: int  # leading blocks committed to the prefix cache


@attrs.frozen(slots=True)
class Preempted:
    """Released its KV for recompute; waits to be admitted again."""


@attrs.frozen(slots=True)
class Finished:
    reason: FinishReason


RequestState = Waiting | Prefilling | Decoding | Preempted | Finished
Active = Prefilling | Decoding

STATE_NAMES: dict[type, str] = {
    Waiting: "waiting",
    Prefilling: "prefilling",
    Decoding: "decoding",
    Preempted: "preempted",
    Finished: "finished",
}

TRANSITIONS: dict[tuple[str, str], str] = {
    ("waiting", "admit"): "prefilling",
    ("waiting", "abort"): "finished",
    ("prefilling", "prefill_chunk"): "prefilling",
    ("prefilling", "first_token"): "decoding",
    ("prefilling", "preempt"): "preempted",
    ("prefilling", "finish"): "finished",
    ("prefilling", "abort"): "finished",
    ("decoding", "token"): "decoding",
    ("decoding", "preempt"): "preempted",
    ("decoding", "finish"): "finished",
    ("decoding", "abort"): "finished",
    ("preempted", "admit"): "prefilling",
    ("preempted", "abort"): "finished",
}
"""(state, event) -> next state. Every pair not listed is illegal."""


def state_name(state: RequestState) -> str:
    return STATE_NAMES[type(state)]


@attrs.define(slots=True, eq=False)
class Request:
    """One request's identity, history and current state."""

    request_id: str
    tokens: TokenBuffer  # prompt, then outputs
    num_prompt_tokens: int
    max_tokens: int
    stop_token_ids: frozenset[int]
    eos_token_id: int | None
    priority: int
    session_id: str | None
    arrival_time: float
    ttft_deadline: float | None
    sampling: SamplingParams
    seq: int  # submission order, the tie-breaker of every policy
    cache_salt: str | None = None  # shares cached KV only with requests of the same salt
    last_token: int = -1  # tokens[-1], kept as an int: a decode's input without a trip through the buffer
    state: RequestState = attrs.field(factory=Waiting)
    block_hashes: list[int] = attrs.field(factory=list)  # of every full block of ``tokens``
    epoch: int = 0  # bumped when the request leaves the running set; stale step results are dropped
    inflight_steps: int = 0
    inflight_samples: int = 0  # tokens that steps in flight will sample for it
    draft_tokens: list[int] = attrs.field(factory=list)
    num_preemptions: int = 0
    num_failures: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    num_cached_tokens: int = 0  # prefix-cache hit at its latest admission
    planned_in: int = -1  # the latest step it was planned in
    blocked_at_free: int = -1  # free blocks when it last could not be admitted
    # Committed blocks (ids, generations) when it finished, for a later request that repeats its prefix; and,
    # on such a request until its admission, the part of them its prompt repeats (see PromptMatcher.hash_prompt).
    kv_run: tuple[Int64Array, Int64Array] | None = None
    reuse_run: tuple[Int64Array, Int64Array] | None = None

    @classmethod
    def from_spec(cls, spec: RequestSpec, arrival_time: float, seq: int) -> Request:
        stop = spec.stop_token_ids
        eos = None if spec.ignore_eos else spec.eos_token_id
        prompt = prompt_array(spec.prompt_token_ids)
        return cls(
            request_id=spec.request_id,
            tokens=TokenBuffer(prompt, reserve=spec.max_tokens),
            num_prompt_tokens=len(spec.prompt_token_ids),
            max_tokens=spec.max_tokens,
            stop_token_ids=stop,
            eos_token_id=eos,
            priority=spec.priority,
            session_id=spec.session_id,
            arrival_time=arrival_time,
            ttft_deadline=spec.ttft_deadline,
            sampling=spec.sampling,
            seq=seq,
            cache_salt=spec.cache_salt,
            last_token=int(prompt[-1]),
        )

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]

    @property
    def is_finished(self) -> bool:
        return type(self.state) is Finished


def transition(request: Request, event: str, new_state: RequestState) -> None:
    """Move ``request`` to ``new_state`` by ``event``, or raise and change nothing."""
    current = state_name(request.state)
    target = TRANSITIONS.get((current, event))
    if target is None:
        raise IllegalTransition(f"request {request.request_id!r}", current, event)
    if target != STATE_NAMES[type(new_state)]:
        raise IllegalTransition(
            f"request {request.request_id!r}", current, event, f"leads to {target!r}, not {state_name(new_state)!r}"
        )
    request.state = new_state


def held_blocks(state: RequestState) -> list[int]:
    """The KV blocks a state owns (exhaustive: mypy proves every state is handled)."""
    match state:
        case Prefilling(blocks=blocks) | Decoding(blocks=blocks):
            return blocks
        case Waiting() | Preempted() | Finished():
            return []
        case _:
            assert_never(state)
