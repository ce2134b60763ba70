"""Stopping without cutting anyone off: drain running requests, then end every stream with ``abort``.

On the first SIGTERM or SIGINT the server stops accepting connections and
refuses new requests (503), lets the running ones finish for up to
``drain_timeout_s``, then aborts what is left through the engine, so every
open stream still gets a last chunk with ``finish_reason: "abort"`` and
``[DONE]`` and every whole-answer request its answer so far; only then does
uvicorn close the connections and the engine thread stop. The process exits
0. A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn

if TYPE_CHECKING:
    from tokensched.server.generation import Generation
    from tokensched.server.guard import ConnectionGuard

log = logging.getLogger("tokensched.server")

ABORT_GRACE_S = 1.0  # how long aborted streams get to send their last chunk


class Drain:
    """The generations being served, and whether new ones are still welcome. Event-loop thread only."""

    def __init__(self) -> None:
        self.live: set[Generation] = set()
        self.accepting = True
        self._idle = asyncio.Event()
        self._idle.set()

    def add(self, generation: Generation) -> None:
        self.live.add(generation)
        self._idle.clear()

    def discard(self, generation: Generation) -> None:
        self.live.discard(generation)
        if not self.live:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True once nothing is being served, False if ``timeout`` passed first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def abort_all(self) -> int:
        """Ask the engine to abort every live generation's requests; each ends with ``abort``. Returns how many."""
        for generation in self.live:
            generation.abort_in_engine()
        return len(self.live)


class GracefulServer(uvicorn.Server):
    """uvicorn's server, draining a :class:`Drain` before it shuts down, and exiting 0 on a signal."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, drain_timeout_s: float, guard: ConnectionGuard | None = None
    ) -> None:
        super().__init__(config)
        self.guard = guard
        self.drain = drain
        self.drain_timeout_s = drain_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None
        self._signalled = False

    async def startup(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        if self.guard is not None:
            self._loop.set_exception_handler(self._loop_exception)
        await super().startup(sockets)  # type: ignore[arg-type]

    def _loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, object]) -> None:
        # asyncio logs a traceback for every accept() that finds no free descriptor; count them instead
        if self.guard is not None and isinstance(context.get("exception"), OSError):
            message = str(context.get("message", ""))
            if "out of system resource" in message:
                self.guard.shed.count("accepts that found no free file descriptor")
                return
        loop.default_exception_handler(context)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # uvicorn would re-raise the signal after shutting down (exit status 143 or 130): a drained stop exits 0
        if self._signalled:
            os.write(2, f"tokensched: second {signal.Signals(sig).name}, exiting now\n".encode())
            os._exit(128 + sig)
        self._signalled = True
        self.request_shutdown()

    def request_shutdown(self) -> None:
        """Begin the drain; safe from any thread and from a signal handler."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self.should_exit = True
            return
        loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        if self._draining is None:
            self._draining = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        started = time.monotonic()
        for server in self.servers:
            server.close()  # stop accepting; open connections stay
        self.drain.accepting = False
        running = len(self.drain.live)
        log.info("shutting down: %d request(s) running, draining for up to %.1f s", running, self.drain_timeout_s)
        if not await self.drain.wait_idle(self.drain_timeout_s):
            aborted = self.drain.abort_all()
            log.info("drain timeout: aborted %d request(s)", aborted)
            if not await self.drain.wait_idle(ABORT_GRACE_S):
                log.warning("%d request(s) did not end after abort; closing their connections", len(self.drain.live))
        log.info("drained in %.2f s", time.monotonic() - started)
        self.should_exit = True
