"""The engine thread: the one place that drives the scheduler while the server runs.

HTTP handlers live on an asyncio loop; the scheduler is synchronous and not
thread-safe. So one dedicated thread owns the :class:`~tokensched.Scheduler`
and its :class:`~tokensched.Engine` outright, and everything else talks to it
through a thread-safe command queue: ``submit`` (answered through a
``concurrent.futures.Future``, so a full queue or an invalid request is an
exception in the handler that asked) and ``abort``. Outputs go back through
the per-request ``sink`` each submission brought; the app's sink hops them
onto the event loop. The thread also publishes a stats snapshot after every
step, so ``/metrics`` and ``/health`` never touch the scheduler.

With the simulated GPU the executor's clock is virtual and races ahead of
the wall; ``realtime`` paces it (1.0 = one simulated second per wall second)
so that a demo or a load generator sees latencies of the simulated hardware.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future

import attrs

from tokensched import Engine, Executor, RequestOutput, RequestSpec, Scheduler, SchedulerConfig
from tokensched.errors import TokenschedError, UnknownRequest
from tokensched.plan import FinishReason
from tokensched.policies.base import Policy
from tokensched.server.stepwatch import SpecDecodeCounters, StepWatch

log = logging.getLogger(__name__)

Sink = Callable[[list[RequestOutput]], None]
"""Called on the engine thread with a request's outputs of one step; must not block."""


def served_max_model_len(executor: Executor, config: Mapping[str, object]) -> int:
    """The context length to advertise and enforce: the configured one, or less if the KV pool holds less.

    The scheduler refuses a request needing more than the pool's blocks, counting
    ``prompt + max_tokens - 1 + num_speculative_tokens`` tokens (``Scheduler.submit``);
    the largest length that always passes is ``blocks * block_size + 1 - k``.
    """
    blocks = config.get("num_blocks", executor.num_kv_blocks)
    spec = config.get("num_speculative_tokens", 0)
    configured = config.get("max_model_len", SchedulerConfig.model_fields["max_model_len"].default)
    if not isinstance(blocks, int) or not isinstance(spec, int) or not isinstance(configured, int):
        raise ValueError(f"num_blocks, num_speculative_tokens and max_model_len must be integers, got {dict(config)}")
    return max(1, min(configured, blocks * executor.block_size + 1 - spec))


class EngineStopped(TokenschedError):
    """The engine thread is not running (never started, stopped, or crashed)."""


@attrs.frozen(slots=True)
class _Submit:
    specs: Sequence[RequestSpec]
    sink: Sink
    done: Future[None]


@attrs.frozen(slots=True)
class _Abort:
    request_ids: Sequence[str]


@attrs.frozen(slots=True)
class _Stop:
    pass


_Command = _Submit | _Abort | _Stop


class EngineRunner:
    """Runs an Engine on its own thread; thread-safe ``submit`` and ``abort`` for everyone else.

    >>> runner = EngineRunner(Scheduler(config), executor)   # doctest: +SKIP
    >>> runner.start(); runner.submit([spec], sink).result(); runner.stop()   # doctest: +SKIP
    """

    _STALL_WAIT_S = 0.005

    def __init__(
        self,
        scheduler: Scheduler,
        executor: Executor,
        *,
        realtime: float | None = None,
        check_invariants: bool = False,
    ) -> None:
        if realtime is not None and realtime < 0:
            raise ValueError(f"realtime must be >= 0 (wall seconds per executor second), got {realtime}")
        self.scheduler = scheduler
        self.executor = executor
        self._launched_at: dict[str, float] = {}
        self.spec_decode = SpecDecodeCounters() if scheduler.config.num_speculative_tokens > 0 else None
        """Draft counters, when the scheduler plans speculative decoding (None otherwise)."""
        self._engine = Engine(scheduler, StepWatch(executor, self._launched_at, self.spec_decode))
        self._realtime = realtime
        self._check_invariants = check_invariants
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._sinks: dict[str, Sink] = {}
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._anchor: tuple[float, float] | None = None  # (executor clock, wall clock) when pacing began
        self.stats = scheduler.stats()
        """The latest snapshot of ``Scheduler.stats()``, replaced (never mutated) after every step."""
        self.error: BaseException | None = None
        """What stopped the engine thread, if it crashed."""
        self.steps = 0

    @classmethod
    def create(
        cls,
        executor: Executor,
        policy: Policy | None = None,
        *,
        realtime: float | None = None,
        check_invariants: bool = False,
        config: Mapping[str, object] | None = None,
    ) -> EngineRunner:
        """A runner over a scheduler sized by the executor (block size, block count, clock).

        ``config`` sets any other :class:`~tokensched.SchedulerConfig` field (``max_waiting``, ``max_model_len``...);
        ``max_model_len`` is lowered to what the KV pool can hold (:func:`served_max_model_len`).
        """
        settings = dict(config or {})
        settings["max_model_len"] = served_max_model_len(executor, settings)
        engine = Engine.create(executor, policy, **settings)
        return cls(engine.scheduler, executor, realtime=realtime, check_invariants=check_invariants)

    @property
    def config(self) -> SchedulerConfig:
        return self.scheduler.config

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopped.is_set()

    def start(self) -> None:
        if self._thread is not None:
            raise EngineStopped("the engine thread was already started; build a new runner to restart")
        self._thread = threading.Thread(target=self._main, name="tokensched-engine", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the current step, abort what is left, and join the thread."""
        if self._thread is None:
            return
        self._commands.put(_Stop())
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("engine thread did not stop within %.1f s", timeout)

    def submit(self, specs: Sequence[RequestSpec], sink: Sink) -> Future[None]:
        """Queue requests; the future fails with the scheduler's error if any is refused (then none runs)."""
        done: Future[None] = Future()
        if not self.running:
            done.set_exception(EngineStopped(self._why_stopped()))
            return done
        self._commands.put(_Submit(tuple(specs), sink, done))
        if self._stopped.is_set():  # stopped while we queued: nobody else will answer it
            self._fail_pending_commands()
        return done

    def take_launched_at(self, request_id: str) -> float | None:
        """When (``time.perf_counter()``) the request was first launched in a step, once; None if never.

        Written by the engine thread before the step's outputs are delivered,
        so a request's first token always finds it; the reader removes it.
        """
        return self._launched_at.pop(request_id, None)

    def abort(self, request_ids: Sequence[str]) -> None:
        """Abort requests (a client went away); unknown or finished ids are ignored."""
        if self.running:
            self._commands.put(_Abort(tuple(request_ids)))

    # --- the engine thread -----------------------------------------------------------------------

    def _main(self) -> None:
        try:
            while not self._stopped.is_set():
                self._drain(wait=0 if self.scheduler.has_work else None)
                if self._stopped.is_set() or not self.scheduler.has_work:
                    continue
                self._step()
        except BaseException as exc:  # a bug or a dead device: fail every live request, then report
            self.error = exc
            log.exception("engine thread crashed")
            self._stopped.set()
            self._fail_all(exc)
        else:
            self._abort_all()
        finally:
            self._stopped.set()
            self._fail_pending_commands()

    def _drain(self, wait: float | None) -> None:
        """Apply every queued command, first waiting up to ``wait`` seconds for one (None: until one comes)."""
        try:
            command = self._commands.get_nowait() if wait == 0 else self._commands.get(timeout=wait)
        except queue.Empty:
            return
        while True:
            self._apply(command)
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                break
        self.stats = self.scheduler.stats()

    def _apply(self, command: _Command) -> None:
        match command:
            case _Submit(specs, sink, done):
                if not done.set_running_or_notify_cancel():
                    return
                accepted: list[str] = []
                try:
                    for spec in specs:
                        self.scheduler.submit(spec)
                        accepted.append(spec.request_id)
                except BaseException as exc:
                    for request_id in accepted:
                        self.scheduler.abort(request_id)
                    done.set_exception(exc)
                    return
                for request_id in accepted:
                    self._sinks[request_id] = sink
                done.set_result(None)
            case _Abort(request_ids):
                for request_id in request_ids:
                    self._abort(request_id)
            case _Stop():
                self._stopped.set()

    def _abort(self, request_id: str) -> None:
        sink = self._sinks.pop(request_id, None)
        if sink is None:
            return
        try:
            output = self.scheduler.abort(request_id)
        except UnknownRequest:
            return
        sink([output])

    def _step(self) -> None:
        if self._realtime is not None and self._anchor is None:
            self._anchor = (self.executor.now(), time.perf_counter())
        if self._engine.num_in_flight == 0 and self._engine.launch_ready() == 0:
            # work, but none of it can be planned now (every waiting request blocked): wait for a command
            self._drain(wait=self._STALL_WAIT_S)
            return
        outputs = self._engine.step()
        self.steps += 1
        if self._check_invariants:
            self.scheduler.check_invariants()
        self._pace()
        self._deliver(outputs)
        self.stats = self.scheduler.stats()
        if not self.scheduler.has_work:
            self._anchor = None  # idle: the next burst starts a fresh pacing window

    def _pace(self) -> None:
        if self._realtime is None or self._anchor is None:
            return
        virtual0, wall0 = self._anchor
        delay = wall0 + (self.executor.now() - virtual0) * self._realtime - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    def _deliver(self, outputs: Sequence[RequestOutput]) -> None:
        by_request: dict[str, list[RequestOutput]] = {}
        for output in outputs:
            by_request.setdefault(output.request_id, []).append(output)
        for request_id, mine in by_request.items():
            sink = self._sinks.get(request_id)
            if sink is None:
                continue
            if mine[-1].finished:
                del self._sinks[request_id]
            sink(mine)

    def _abort_all(self) -> None:
        for request_id in list(self._sinks):
            self._abort(request_id)

    def _fail_all(self, exc: BaseException) -> None:
        sinks, self._sinks = self._sinks, {}
        for request_id, sink in sinks.items():
            try:
                sink([RequestOutput(request_id=request_id, new_token_ids=[], finish_reason=FinishReason.ERROR)])
            except Exception:  # a broken sink must not hide the others
                log.exception("sink for %s failed while reporting %r", request_id, exc)

    def _fail_pending_commands(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, _Submit) and command.done.set_running_or_notify_cancel():
                command.done.set_exception(EngineStopped(self._why_stopped()))

    def _why_stopped(self) -> str:
        if self.error is not None:
            return f"the engine stopped after an error: {self.error!r}"
        return "the engine is not running"
