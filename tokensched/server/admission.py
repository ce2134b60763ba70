"""Who may start a request now: not while draining, and not past one client's share.

A per-client cap keeps one address (one tenant behind one key, or one
runaway script) from filling the scheduler's queue for everyone else. It
counts HTTP requests that have been admitted and not yet answered, keyed by
the client's address; refusals are 429 with Retry-After and are summed into
the shed log line rather than logged one by one.
"""

from __future__ import annotations

from collections import Counter

from tokensched.server.errors import ApiError
from tokensched.server.guard import ShedLog


class ClientCap:
    """Unfinished requests per client address. Event-loop thread only."""

    def __init__(self, limit: int | None, retry_after_s: int, shed: ShedLog) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.shed = shed
        self.active: Counter[str] = Counter()

    def enter(self, client: str) -> None:
        """Count one more request for ``client``, or raise a 429 if it has its share already."""
        if self.limit is not None and self.active[client] >= self.limit:
            self.shed.count("requests refused with 429 (per-client cap)")
            raise ApiError(
                429,
                f"this client already has {self.active[client]} unfinished requests, the most one client may have; "
                f"retry after {self.retry_after_s} s",
                type="rate_limit_error",
                code="too_many_requests",
                headers={"Retry-After": str(self.retry_after_s)},
                reason="client_cap",
            )
        self.active[client] += 1

    def leave(self, client: str) -> None:
        left = self.active[client] - 1
        if left > 0:
            self.active[client] = left
        else:
            del self.active[client]
