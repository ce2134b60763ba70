"""The connection layer's defences: a connection cap, head and body read timeouts, one log line per interval.

uvicorn accepts every connection and keeps an idle one open forever; a client
holding many idle sockets can then use up the process's file descriptors, and
every ``accept`` after that fails (and asyncio logs each failure). So the
protocol uvicorn builds per connection is wrapped here:

* at most ``limit`` connections are open; a new one past it closes the oldest
  connection that is not inside a request (idle, or still sending its head),
  and if every one is busy the new one gets a bare 503 and is closed, lingering
  like the 408 below (up to :data:`REFUSED_LINGERING_MAX` at once). The
  limit is also kept below the file-descriptor limit, so ``accept`` never
  fails for lack of one;
* a connection that has not sent a whole request head within
  ``header_timeout_s`` of opening (or of its previous response) is closed;
* a request whose body has not arrived whole within ``body_timeout_s`` of
  its head gets a bare 408 and its connection is closed. The deadline is for
  the whole body, not between chunks: a client trickling a byte now and then
  (slowloris on the body) would reset a per-chunk timer forever, and a
  connection inside a request is never evicted by the cap. The close lingers
  (see :data:`LINGER_S`), so the client can read the 408;
* refusals are counted and written as one line per interval, never one per
  connection.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("tokensched.server")

LISTEN_BACKLOG = 128
"""The listen backlog, which is also how many connections asyncio accepts per wake-up
(``selector_events._accept_connection`` loops ``backlog`` times) before any of them reaches the guard."""
REFUSED_LINGERING_MAX = LISTEN_BACKLOG
"""How many connections refused with 503 may linger at once (see :data:`LINGER_S`); one refused past that is
closed at once (its client may then see a reset: under such a flood, giving the descriptors back comes first)."""
FD_RESERVE = 3 * LISTEN_BACKLOG + REFUSED_LINGERING_MAX + 64
"""Descriptors kept free below the limit: up to three accept batches in flight (accepted, being evicted, being
closed), the refused connections lingering, and 64 for the listener, logs and the executor."""
_SHED_BODY = b'{"error":{"message":"too many open connections","type":"server_overloaded","code":"overloaded"}}'
_SHED_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_SHED_BODY), _SHED_BODY)
)
LINGER_S = 2.0
"""How long a connection answered 408 (or refused with 503) keeps reading, and dropping, what its client still
sends before it is closed (sooner if the client closes). Closing a socket with unread bytes, or one that bytes
still reach, makes the kernel send a reset, and a reset that arrives before the client has read the answer
discards it: the client sees "connection reset", not the answer. So the server half-closes (its FIN follows the
answer) and drains, as HTTP servers' lingering close does."""
_BODY_TIMEOUT_BODY = (
    b'{"error":{"message":"the request body did not arrive in time","type":"invalid_request_error",'
    b'"code":"request_timeout"}}'
)
_BODY_TIMEOUT_408 = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_BODY_TIMEOUT_BODY), _BODY_TIMEOUT_BODY)
)


def connection_limit(requested: int) -> int:
    """``requested``, lowered so that open connections never use up the file-descriptor limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(1, min(requested, soft - FD_RESERVE))


SHED_KINDS = {
    "idle_connection_evicted": "idle connections closed to admit new ones",
    "connection_refused_503": "connections refused with 503 (all busy)",
    "header_timeout": "connections closed for not sending a request head in time",
    "body_timeout": "requests answered 408 for not sending their body in time",
    "client_cap_429": "requests refused with 429 (per-client cap)",
    "accept_no_descriptor": "accepts that found no free file descriptor",
}
"""What :class:`ShedLog` counts: the ``kind`` label of ``tokensched:shed_total``, and its words in the log line."""


class ShedLog:
    """Counts refusals by kind and logs them as one line per ``interval_s``; ``totals`` feed ``/metrics``."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.counts: Counter[str] = Counter()
        self.totals: Counter[str] = Counter()
        self._pending: asyncio.TimerHandle | None = None

    def count(self, kind: str) -> None:
        if kind not in SHED_KINDS:
            raise ValueError(f"unknown shed kind {kind!r}; one of {sorted(SHED_KINDS)}")
        self.counts[kind] += 1
        self.totals[kind] += 1
        if self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(self.interval_s, self.flush)

    def flush(self) -> None:
        """Log what was counted since the last line (at most once per interval, or now at shutdown)."""
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.counts:
            summary = ", ".join(f"{n} {SHED_KINDS[kind]}" for kind, n in sorted(self.counts.items()))
            log.warning("shed in the last %.0f s: %s", self.interval_s, summary)
            self.counts.clear()


class ConnectionGuard:
    """The open connections of one server, oldest first, and what to do when there are too many."""

    def __init__(self, limit: int, header_timeout_s: float, shed: ShedLog, *, body_timeout_s: float) -> None:
        self.limit = connection_limit(limit)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.shed = shed
        self.open: dict[GuardedH11Protocol, None] = {}  # insertion-ordered: the oldest first
        self.refused_lingering = 0  # refused connections not closed yet (bounded by REFUSED_LINGERING_MAX)

    def admit(self, protocol: GuardedH11Protocol) -> bool:
        """Make room for ``protocol`` (closing the oldest idle connection) or refuse it."""
        if len(self.open) >= self.limit:
            victim = next((p for p in self.open if not p.in_request), None)
            if victim is None:
                self.shed.count("connection_refused_503")
                return False
            self.shed.count("idle_connection_evicted")
            del self.open[victim]  # now, not at connection_lost: the next admit must not pick it again
            victim.close()
        self.open[protocol] = None
        return True

    def forget(self, protocol: GuardedH11Protocol) -> None:
        self.open.pop(protocol, None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol under a :class:`ConnectionGuard` (set on a subclass by :func:`guarded_protocol`)."""

    guard: ConnectionGuard

    _head_timer: asyncio.TimerHandle | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_timed_cycle: object = None  # the request cycle the body timer runs for (one timer per request)
    _linger_timer: asyncio.TimerHandle | None = None  # set once answered 408 or refused: closes it at LINGER_S
    _admitted = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.guard.admit(self):
            self._refuse(transport)
            return
        self._admitted = True
        super().connection_made(transport)
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._admitted:
            if self._linger_timer is not None:  # a refused connection that lingered
                self._linger_timer.cancel()
                self.guard.refused_lingering -= 1
            return
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        self.guard.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._admitted or self._linger_timer is not None:  # lingering after a 408: dropped unread
            return
        super().data_received(data)
        self._watch_body()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._await_head()
            self._watch_body()  # a pipelined request may have started inside on_response_complete

    @property
    def in_request(self) -> bool:
        """A request head has arrived and its response is not complete (one answered 408 is done with)."""
        cycle = self.cycle
        return cycle is not None and not cycle.response_complete and self._linger_timer is None

    @property
    def awaiting_body(self) -> bool:
        """Inside a request whose body has not all arrived, and nothing answered yet."""
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_started and not cycle.disconnected

    def close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _await_head(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.guard.header_timeout_s, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.in_request and not self.transport.is_closing():
            self.guard.shed.count("header_timeout")
            self.transport.close()

    def _watch_body(self) -> None:
        """After bytes arrive: a head starts the body's clock, a whole body stops it."""
        if not self.in_request:
            self._cancel_body_timer()
            return
        self._cancel_head_timer()
        if not self.awaiting_body:
            self._cancel_body_timer()
        elif self._body_timed_cycle is not self.cycle:
            self._cancel_body_timer()
            self._body_timed_cycle = self.cycle
            self._body_timer = self.loop.call_later(self.guard.body_timeout_s, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        self._body_timed_cycle = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.awaiting_body and not self.transport.is_closing():
            self.guard.shed.count("body_timeout")
            # Nothing was sent on this request, so the 408 is the whole answer. The app's pending receive()
            # returns http.disconnect, as at a lost connection, and the half-read request never runs.
            cycle = self.cycle
            assert cycle is not None  # awaiting_body says so
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.write(_BODY_TIMEOUT_408)
            self._close_lingering()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 and close lingering, as after a 408: the client has often sent its request already, and
        closing on those unread bytes would reset the connection before it reads why it was refused."""
        guard = self.guard
        transport.write(_SHED_503)
        if guard.refused_lingering >= REFUSED_LINGERING_MAX or not transport.can_write_eof():
            transport.close()
            return
        guard.refused_lingering += 1
        self._linger_timer = self.loop.call_later(LINGER_S, transport.close)
        transport.write_eof()  # reading goes on (dropped in data_received); the client's EOF closes it

    def _close_lingering(self) -> None:
        """Half-close after the answer already written, drop what still arrives, close at the client's EOF
        (asyncio closes the transport then) or at :data:`LINGER_S`, whichever is first."""
        self._linger_timer = self.loop.call_later(LINGER_S, self.close)
        self.flow.resume_reading()  # bytes left unread in the kernel would make the close a reset too
        self.transport.write_eof()


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` bound to ``guard``."""
    return type("BoundGuardedH11Protocol", (GuardedH11Protocol,), {"guard": guard})
