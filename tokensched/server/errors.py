"""HTTP errors in OpenAI's shape, and the mapping from tokensched's errors to status codes.

Every refusal a client can cause says what was wrong in ``error.message`` and,
where one field is at fault, names it in ``error.param``: a client that reads
only the status code still gets the right one (400 invalid, 401 no key,
404 unknown model, 413 body too large, 429 queue full with Retry-After,
503 engine down).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tokensched.errors import CapacityError, InvalidRequest, QueueFull, TokenschedError
from tokensched.server.runner import EngineStopped
from tokensched.server.wire import ErrorInfo, ErrorResponse


class ApiError(Exception):
    """An error answered to the client as ``{"error": {...}}`` with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    @property
    def metric_reason(self) -> str:
        """The ``reason`` label this refusal counts under in ``/metrics``."""
        if self.reason is not None:
            return self.reason
        return {400: "invalid", 401: "unauthorized", 404: "unknown_model", 413: "too_large", 429: "queue_full"}.get(
            self.status, f"http_{self.status}"
        )

    def response(self) -> JSONResponse:
        body = ErrorResponse(error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=self.headers)


def from_validation_error(exc: ValidationError) -> ApiError:
    """A 400 naming every field at fault (``messages.0.role: Input should be ...``)."""
    problems = []
    first_param: str | None = None
    for error in exc.errors(include_url=False):
        loc = ".".join(str(part) for part in error["loc"])
        if first_param is None and loc:
            first_param = loc
        message = error["msg"].removeprefix("Value error, ")
        problems.append(f"{loc}: {message}" if loc else message)
    return ApiError(400, "; ".join(problems) or "invalid request", param=first_param)


def from_engine_error(exc: BaseException, retry_after_s: int) -> ApiError:
    """The answer to a submission the scheduler or the engine thread refused."""
    match exc:
        case QueueFull():
            return ApiError(
                429,
                f"the server is at capacity ({exc}); retry after {retry_after_s} s",
                type="server_overloaded",
                code="queue_full",
                headers={"Retry-After": str(retry_after_s)},
            )
        case CapacityError():
            return ApiError(400, str(exc), code="context_length_exceeded")
        case InvalidRequest():
            return ApiError(400, str(exc))
        case EngineStopped():
            return ApiError(503, str(exc), type="server_error", headers={"Retry-After": str(retry_after_s)})
        case ValidationError():
            return from_validation_error(exc)
        case TokenschedError():
            return ApiError(400, str(exc))
        case _:
            return ApiError(500, f"internal error: {exc!r}", type="server_error")
