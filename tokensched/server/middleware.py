"""ASGI middleware at the edge: a cap on request bodies, answered with 413 before any parsing.

A refused body is read and dropped (up to ``max_discard_bytes``) before the
413 goes out: clients like Python's urllib send the whole body before they
read a byte, and a server that answers and closes early gives them a broken
pipe instead of the 413. A client that leaves mid-upload gets no answer and
the app never runs: there is nobody to answer.

Pure ASGI rather than Starlette's ``BaseHTTPMiddleware``, which would sit
between a streaming response and the client's disconnect and keep the
server from noticing a client that went away mid-stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from tokensched.server.errors import ApiError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimitMiddleware:
    """Refuse request bodies over ``max_bytes`` with 413, whether or not they declare a length.

    A declared ``Content-Length`` over the limit is refused before a byte of
    the body is read. Otherwise the body is read up to the limit and replayed
    to the app; the receive channel then passes through untouched, so the app
    still sees ``http.disconnect``.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        on_reject: Callable[[], None] | None = None,
        max_discard_bytes: int = 64 << 20,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_discard_bytes = max_discard_bytes
        self.on_reject = on_reject

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._reject(scope, receive, send, declared, received=0, more=True)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left mid-upload: nothing to run, nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, declared, received=size, more=more)
                return
            chunks.append(chunk)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(
        self, scope: Scope, receive: Receive, send: Send, declared: int | None, *, received: int, more: bool
    ) -> None:
        if self.on_reject is not None:
            self.on_reject()
        if declared is None or declared <= self.max_discard_bytes:
            while more and received <= self.max_discard_bytes:  # bounded: a body past the hard cap is cut off
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                received += len(message.get("body", b""))
                more = message.get("more_body", False)
        size = f"of {declared} bytes " if declared is not None else ""
        error = ApiError(
            413,
            f"request body {size}exceeds the limit of {self.max_bytes} bytes",
            code="request_too_large",
            headers={"Connection": "close"},
        )
        await error.response()(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
