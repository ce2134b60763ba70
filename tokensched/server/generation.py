"""One HTTP request's life on the event loop: submit, receive tokens, detokenize, stop, finish.

A :class:`Generation` is one or more scheduler requests (one per prompt, one
choice each) sharing an asyncio queue that the engine thread fills. It turns
token ids into text pieces that are safe to send (whole characters, no half
of a stop string), ends a choice at a stop string by aborting its scheduler
request, times every token for the metrics, and aborts whatever is still
running when the client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence

import attrs

from tokensched import RequestOutput, RequestSpec
from tokensched.plan import FinishReason
from tokensched.server.metrics import RequestTiming, ServerMetrics
from tokensched.server.runner import EngineRunner
from tokensched.server.tokenizer import StreamDecoder, Tokenizer
from tokensched.server.wire import FinishReasonWire


class StopMatcher:
    """Finds stop strings in streamed text, holding back what might be the start of one.

    >>> m = StopMatcher(["END"])
    >>> m.feed("abcE"), m.feed("NDxyz")
    (('abc', False), ('', True))
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """Text safe to release, and whether a stop string ended the output (text before it only)."""
        text = self._held + piece
        first = min((i for i in (text.find(s) for s in self._stops) if i >= 0), default=-1)
        if first >= 0:
            self._held = ""
            return text[:first], True
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), keep, -1):
                if text.endswith(stop[:k]):
                    keep = k
                    break
        self._held = text[len(text) - keep :] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


@attrs.frozen(slots=True)
class Delta:
    """New text for one choice; ``finish_reason`` set on its last delta."""

    index: int
    text: str
    finish_reason: FinishReasonWire | None = None


@attrs.define(slots=True)
class _Choice:
    index: int
    request_id: str
    num_prompt_tokens: int
    max_tokens: int
    decoder: StreamDecoder
    stop: StopMatcher
    num_tokens: int = 0
    num_cached_tokens: int = 0
    last_token_at: float | None = None
    first_token_at: float | None = None
    launched_at: float | None = None
    finish_reason: FinishReasonWire | None = None


_WIRE_REASONS: dict[FinishReason, FinishReasonWire] = {
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.ABORT: "abort",
    FinishReason.ERROR: "error",
}


class Generation:
    """The choices of one HTTP request, fed by the engine thread."""

    def __init__(
        self,
        runner: EngineRunner,
        tokenizer: Tokenizer,
        metrics: ServerMetrics,
        specs: Sequence[RequestSpec],
        stops: Sequence[str],
    ) -> None:
        self._runner = runner
        self._tokenizer = tokenizer
        self._metrics = metrics
        self._specs = list(specs)
        self._choices = {
            spec.request_id: _Choice(
                index=i,
                request_id=spec.request_id,
                num_prompt_tokens=len(spec.prompt_token_ids),
                max_tokens=spec.max_tokens,
                decoder=StreamDecoder(tokenizer),
                stop=StopMatcher(stops),
            )
            for i, spec in enumerate(specs)
        }
        self._queue: asyncio.Queue[list[RequestOutput]] = asyncio.Queue()
        self._unfinished = len(self._choices)
        self.accepted_at = time.perf_counter()

    async def submit(self) -> None:
        """Hand the requests to the engine; raises what the scheduler raised (nothing runs then)."""
        loop = asyncio.get_running_loop()
        queue = self._queue

        def sink(outputs: list[RequestOutput]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed at shutdown: nobody is listening
                loop.call_soon_threadsafe(queue.put_nowait, outputs)

        self.accepted_at = time.perf_counter()
        await asyncio.wrap_future(self._runner.submit(self._specs, sink))

    @property
    def done(self) -> bool:
        return self._unfinished == 0

    @property
    def prompt_tokens(self) -> int:
        return sum(c.num_prompt_tokens for c in self._choices.values())

    @property
    def completion_tokens(self) -> int:
        return sum(c.num_tokens for c in self._choices.values())

    @property
    def cached_tokens(self) -> int:
        """Prompt tokens the prefix cache served (as of each choice's latest admission)."""
        return sum(c.num_cached_tokens for c in self._choices.values())

    async def deltas(self) -> AsyncIterator[Delta]:
        """Text as it becomes safe to send, until every choice has finished."""
        while self._unfinished:
            outputs = await self._queue.get()
            now = time.perf_counter()
            for output in outputs:
                choice = self._choices[output.request_id]
                if choice.finish_reason is None:
                    delta = self._apply(choice, output, now)
                    if delta is not None:
                        yield delta

    def abort(self) -> None:
        """Abort every unfinished choice (the client went away). Idempotent."""
        unfinished = [c for c in self._choices.values() if c.finish_reason is None]
        if not unfinished:
            return
        now = time.perf_counter()
        for choice in unfinished:
            self._finish(choice, "abort", now)
        self._runner.abort([c.request_id for c in unfinished])

    def abort_in_engine(self) -> None:
        """Ask the engine to abort the unfinished choices; each then ends with ``abort`` through :meth:`deltas`."""
        unfinished = [c.request_id for c in self._choices.values() if c.finish_reason is None]
        if unfinished:
            self._runner.abort(unfinished)

    def _apply(self, choice: _Choice, output: RequestOutput, now: float) -> Delta | None:
        token_ids = output.new_token_ids
        if output.num_cached_tokens:
            choice.num_cached_tokens = output.num_cached_tokens
        if token_ids:
            self._time_tokens(choice, len(token_ids), now)
            if output.finish_reason is FinishReason.STOP and token_ids[-1] == self._tokenizer.eos_token_id:
                token_ids = token_ids[:-1]  # end of sequence is a signal, not text
        text, stopped = choice.stop.feed(choice.decoder.push(token_ids))
        if stopped:
            self._finish(choice, "stop", now)
            self._runner.abort([choice.request_id])
            return Delta(choice.index, text, "stop")
        if output.finish_reason is None:
            return Delta(choice.index, text) if text else None
        tail, stopped = choice.stop.feed(choice.decoder.flush())
        text += tail if stopped else tail + choice.stop.flush()
        reason: FinishReasonWire = "stop" if stopped else _WIRE_REASONS[output.finish_reason]
        self._finish(choice, reason, now)
        return Delta(choice.index, text, reason)

    def _time_tokens(self, choice: _Choice, count: int, now: float) -> None:
        if choice.last_token_at is None:
            choice.first_token_at = now
            choice.launched_at = self._runner.take_launched_at(choice.request_id)
            self._metrics.on_first_token(now - self.accepted_at, choice.num_prompt_tokens)
            self._metrics.on_tokens(0.0, count, first=True)
        else:
            self._metrics.on_tokens(now - choice.last_token_at, count)
        choice.last_token_at = now
        choice.num_tokens += count

    def _finish(self, choice: _Choice, reason: FinishReasonWire, now: float) -> None:
        choice.finish_reason = reason
        self._unfinished -= 1
        relaunched_at = self._runner.take_launched_at(choice.request_id)  # forget it (a resume re-records it)
        launched_at = choice.launched_at if choice.first_token_at is not None else relaunched_at
        accepted = self.accepted_at
        self._metrics.on_finished(
            RequestTiming(
                reason=reason,
                e2e=now - accepted,
                prompt_tokens=choice.num_prompt_tokens,
                generation_tokens=choice.num_tokens,
                max_tokens=choice.max_tokens,
                scheduled=None if launched_at is None else max(0.0, launched_at - accepted),
                first_token=None if choice.first_token_at is None else choice.first_token_at - accepted,
            )
        )
