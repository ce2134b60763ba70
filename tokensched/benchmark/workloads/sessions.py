"""Plays sessions turn by turn: closed loop (after the previous answer) or open loop (on a fixed timeline).

The driver asks :meth:`SessionWorkload.next_release_time` when to wake up,
submits what :meth:`SessionWorkload.release` returns, and reports each finished
request through :meth:`SessionWorkload.on_finished` with the answer's token
ids. The next turn's prompt is the previous prompt, those exact answer tokens
and the turn's new tokens, so the scheduler's prefix cache sees a true prefix.

Closed loop (``TraceHeader.turns == "closed"``): a turn is released think time
after the previous answer finished, so a slow server slows its own arrivals.
Open loop (``"open"``): every turn is released at its session's start plus
:meth:`~tokensched.benchmark.workloads.trace.SessionRecord.turn_offsets`, so the
offered load is the same whatever the server does, as a replay of recorded
sessions is. If the previous answer is not in yet when the turn is due, the
prompt carries a stand-in answer of the planned length (the recorded answer of a
replay), drawn from the session's seed; the server's own answer then does not
match it and the prefix cache hits only up to the previous prompt.

Prompt tokens are pseudo-random 16-bit ids drawn from each session's own seed
(reduced modulo the vocabulary when it is smaller), so they are identical on
every replay and two sessions never share a block by accident; only the
optional shared system prompt is common to all of them.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator, Sequence
from typing import Protocol

import attrs

from tokensched.benchmark.workloads.context import SessionContext, draw_tokens
from tokensched.benchmark.workloads.trace import SessionRecord, Trace, TraceError, TraceHeader
from tokensched.config import GREEDY, RequestSpec
from tokensched.errors import UnknownRequest
from tokensched.plan import FinishReason
from tokensched.tokens import Int32Array


class SessionSource(Protocol):
    """Sessions in start order; ``None`` when there are no more."""

    @property
    def header(self) -> TraceHeader: ...

    def next_session(self) -> SessionRecord | None: ...


class TraceSource:
    """Replays the sessions of a recorded :class:`~tokensched.benchmark.workloads.trace.Trace`."""

    def __init__(self, trace: Trace) -> None:
        self.header = trace.header
        sessions = list(trace.sessions)
        if trace.header.arrival == "rate":
            missing = [s.session_id for s in sessions if s.start_time is None]
            if missing:
                raise TraceError(f"rate-arrival trace has sessions without start_time: {missing[:5]}")
            sessions.sort(key=lambda s: s.start_time or 0.0)
        self._sessions: Iterator[SessionRecord] = iter(sessions)

    def next_session(self) -> SessionRecord | None:
        return next(self._sessions, None)


def prompt_tokens(seed: int | str, count: int, vocab_size: int) -> list[int]:
    """``count`` reproducible token ids below ``vocab_size`` (fast: one ``randbytes`` call)."""
    return draw_tokens(random.Random(seed), count, vocab_size).tolist()  # type: ignore[no-any-return]


# The fields _make_request sets, as a validated RequestSpec would record them (``model_fields_set``).
_SPEC_FIELDS = frozenset(
    [
        "request_id",
        "prompt_token_ids",
        "max_tokens",
        "eos_token_id",
        "ignore_eos",
        "session_id",
        "arrival_time",
        "ttft_deadline",
    ]
)


@attrs.define(slots=True)
class _LiveSession:
    record: SessionRecord
    rng: random.Random  # the session's prompt-token stream
    context: SessionContext = attrs.field(factory=SessionContext)  # every token of the conversation so far
    turn: int = 0  # index of the next turn to release
    answer: list[int] | None = None  # the last released turn's answer, once it is in and until it is used
    offsets: list[float] | None = None  # open loop: record.turn_offsets(), computed once


@attrs.define(slots=True)
class WorkloadCounts:
    """How far the sessions got (for reports)."""

    sessions_started: int = 0
    sessions_completed: int = 0  # ran every turn
    sessions_capped: int = 0  # the next turn would have passed the context cap
    sessions_failed: int = 0  # closed loop: a turn finished with "abort" or "error", ending its session
    requests_released: int = 0
    requests_failed: int = 0  # finished with "abort" or "error" (open loop: the session goes on)
    stand_in_answers: int = 0  # open loop: turns sent before the previous answer was in
    prompt_tokens_released: int = 0


class SessionWorkload:
    """Turns a stream of sessions into timed :class:`~tokensched.config.RequestSpec` s (open or closed loop).

    Nothing is released at or after ``header.duration_s``; sessions cut off
    there simply stop. ``ttft_deadline_s``, if given, is set on every request
    (for SLO-aware policies).

    Answer lengths can reach the scheduler two ways. By default each request
    asks for exactly its planned length (``max_tokens``, EOS ignored), which
    works with any executor. With ``eos_token_id`` the scheduler is not told:
    requests ask for up to ``max_tokens`` (within the context cap) and stop at
    EOS, and the executor must end each answer at
    :meth:`planned_output_tokens` (``SimExecutor(output_lengths=...)`` does).
    """

    def __init__(
        self,
        source: SessionSource,
        *,
        ttft_deadline_s: float | None = None,
        eos_token_id: int | None = None,
        max_tokens: int = 32_768,
    ) -> None:
        if ttft_deadline_s is not None and not ttft_deadline_s > 0:
            raise ValueError(f"ttft_deadline_s must be positive, got {ttft_deadline_s}")
        if eos_token_id is not None and eos_token_id < 0:
            raise ValueError(f"eos_token_id must be non-negative, got {eos_token_id}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        self._eos = eos_token_id
        self._max_tokens = max_tokens
        self.header = source.header
        self.counts = WorkloadCounts()
        self._source = source
        self._deadline = ttft_deadline_s
        self._end = source.header.duration_s
        self._pending: list[tuple[float, int, _LiveSession]] = []  # (release time, tie-break, session)
        self._sequence = 0
        self._in_flight: dict[str, tuple[_LiveSession, int]] = {}  # request id -> (session, turn)
        self._taken: list[SessionRecord] = []  # in the order taken from the source, as a replay takes them
        self._shared_prefix = draw_tokens(
            random.Random(f"tokensched/shared-prefix/{source.header.shared_prefix_seed}"),
            source.header.shared_prefix_tokens,
            source.header.vocab_size,
        )
        self._rewrite = source.header.rewrite_tail_tokens
        self._concurrent = source.header.arrival == "concurrency"
        self._open = source.header.turns == "open"
        self._upcoming: SessionRecord | None = None  # open loop: the next session to start
        if self._concurrent:
            for _ in range(source.header.concurrency or 0):
                session = source.next_session()
                if session is None:
                    break
                self._schedule_start(session, session.start_time or 0.0)
        else:
            self._upcoming = source.next_session()

    @classmethod
    def from_trace(cls, trace: Trace, *, ttft_deadline_s: float | None = None) -> SessionWorkload:
        return cls(TraceSource(trace), ttft_deadline_s=ttft_deadline_s)

    @property
    def num_in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def num_active_sessions(self) -> int:
        """Sessions with a turn in flight or scheduled (under fixed concurrency: at most ``concurrency``)."""
        return len(self._in_flight) + len(self._pending)

    def planned_output_tokens(self, request_id: str) -> int | None:
        """The answer length the trace plans for a request in flight (``None`` if unknown)."""
        entry = self._in_flight.get(request_id)
        return None if entry is None else entry[0].record.turns[entry[1]].output_tokens

    def next_release_time(self) -> float | None:
        """When the next request becomes due; ``None`` if none ever will without a completion."""
        times = []
        if self._pending:
            times.append(self._pending[0][0])
        if self._upcoming is not None and self._upcoming.start_time is not None:
            times.append(self._upcoming.start_time)
        t = min(times, default=None)
        return t if t is not None and t < self._end else None

    def next_event_time(self) -> float:
        """The earliest ``now`` at which :meth:`release` would change anything (inf: none without a completion).

        Unlike :meth:`next_release_time` it counts sessions that start past
        the end too (``release`` still takes them into the trace), so a caller
        that skips ``release`` calls before it changes nothing.
        """
        t = self._pending[0][0] if self._pending else math.inf
        if self._upcoming is not None:
            t = min(t, self._upcoming.start_time or 0.0)
        return t

    def release(self, now: float) -> list[RequestSpec]:
        """Every request due at or before ``now``, in release order, with its true arrival time."""
        while self._upcoming is not None and (self._upcoming.start_time or 0.0) <= now:
            self._schedule_start(self._upcoming, self._upcoming.start_time or 0.0)
            self._upcoming = self._source.next_session()
        released: list[RequestSpec] = []
        pending = self._pending
        while pending and pending[0][0] <= now:
            at, _, live = heapq.heappop(pending)
            if at >= self._end:
                continue
            released.append(self._make_request(live, at))
        return released

    def on_finished(
        self,
        request_id: str,
        output_token_ids: Sequence[int],
        now: float,
        finish_reason: FinishReason | None = None,
    ) -> None:
        """Record a finished turn; closed loop: schedule the session's next turn after its think time."""
        entry = self._in_flight.pop(request_id, None)
        if entry is None:
            raise UnknownRequest(f"request {request_id!r} was not released by this workload or already finished")
        live, turn_index = entry
        failed = finish_reason in (FinishReason.ABORT, FinishReason.ERROR)
        self.counts.requests_failed += failed
        last = turn_index == len(live.record.turns) - 1
        if self._open:
            if turn_index == live.turn - 1 and not failed:
                live.answer = list(output_token_ids)  # the next turn is not out yet: it carries this answer
            self.counts.sessions_completed += last
            return
        if failed:
            self.counts.sessions_failed += 1
            self._session_ended(now)
            return
        live.answer = list(output_token_ids)
        if last:
            self.counts.sessions_completed += 1
            self._session_ended(now)
            return
        if self._next_turn_passes_cap(live):
            self._session_ended(now)
            return
        self._push(now + live.record.turns[live.turn].think_time, live)

    def _next_turn_passes_cap(self, live: _LiveSession) -> bool:
        """Whether the next turn's prompt plus planned answer would pass the context cap (it ends the session)."""
        previous = live.record.turns[live.turn - 1]
        answer = len(live.answer) if live.answer is not None else previous.output_tokens
        turn = live.record.turns[live.turn]
        if len(live.context) + answer + turn.new_tokens + turn.output_tokens > self.header.max_context_tokens:
            self.counts.sessions_capped += 1
            return True
        return False

    def trace(self) -> Trace:
        """The sessions taken from the source so far, as a trace that replays this run."""
        return Trace(header=self.header, sessions=tuple(self._taken))

    def _schedule_start(self, record: SessionRecord, at: float) -> None:
        if self._concurrent and record.start_time != at:
            record = record.model_copy(update={"start_time": at})
        self._taken.append(record)
        live = _LiveSession(record=record, rng=random.Random(record.token_seed), turn=record.join_turn)
        self._push(at, live)

    def _push(self, at: float, live: _LiveSession) -> None:
        heapq.heappush(self._pending, (at, self._sequence, live))
        self._sequence += 1

    def _session_ended(self, now: float) -> None:
        if self._concurrent and now < self._end:
            session = self._source.next_session()
            if session is not None:
                self._schedule_start(session, now)

    def _make_request(self, live: _LiveSession, at: float) -> RequestSpec:
        record = live.record
        index = live.turn
        turn = record.turns[index]
        vocab = self.header.vocab_size
        if index == record.join_turn:
            self.counts.sessions_started += 1
            first = record.turns[0].new_tokens
            shared = self._shared_prefix[:first]
            context = SessionContext()
            context.extend(shared)
            context.draw(live.rng, first - len(shared), vocab)
            for earlier, joined in zip(record.turns, record.turns[1 : live.turn + 1], strict=False):
                context.draw(live.rng, earlier.output_tokens, vocab)  # an answer from before the run
                context.draw(live.rng, joined.new_tokens, vocab)
            live.context = context
        else:
            context = live.context
            answer: Sequence[int] | Int32Array | None = live.answer
            if answer is None:  # open loop, the previous answer not in yet: the recorded one stands in
                self.counts.stand_in_answers += 1
                stand_in = random.Random(f"{record.token_seed}/answer/{index - 1}")
                answer = draw_tokens(stand_in, record.turns[index - 1].output_tokens, vocab)
            if self._rewrite:  # the agent rebuilt the end of its previous prompt: the cache hits only up to there
                keep = max(len(context) - self._rewrite, min(len(self._shared_prefix), len(context)))
                rewritten = len(context) - keep
                context.truncate(keep)
                context.draw(live.rng, rewritten, vocab)
            context.extend(answer)
            live.answer = None
            context.draw(live.rng, turn.new_tokens, vocab)
        request_id = f"{record.session_id}/{index}"
        self._in_flight[request_id] = (live, index)
        live.turn = index + 1
        if self._open and live.turn < len(record.turns) and not self._next_turn_passes_cap(live):
            offsets = live.offsets
            if offsets is None:
                offsets = live.offsets = record.turn_offsets()
            self._push(at + offsets[live.turn] - offsets[index], live)
        prompt_len = len(context)
        self.counts.requests_released += 1
        self.counts.prompt_tokens_released += prompt_len
        planned = turn.output_tokens
        if self._eos is None:
            max_tokens, ignore_eos = planned, True
        else:
            room = self.header.max_context_tokens - prompt_len
            max_tokens, ignore_eos = max(planned, min(self._max_tokens, room)), False
        # Every field here is valid by construction, and validating a 50k-token prompt costs ~2 ms
        # (5 s over an hour of traffic), so the spec is built unvalidated; the prompt is a view of the
        # context (SessionContext.prompt), and every field is given so that no default is deep-copied.
        return RequestSpec.model_construct(
            set(_SPEC_FIELDS),
            request_id=request_id,
            prompt_token_ids=context.prompt(),
            max_tokens=max_tokens,
            stop_token_ids=frozenset(),
            eos_token_id=self._eos,
            ignore_eos=ignore_eos,
            priority=0,
            session_id=record.session_id,
            arrival_time=at,
            ttft_deadline=self._deadline,
            sampling=GREEDY,
            cache_salt=None,
        )
