"""How one server instance behaves at its edge: address, auth, limits, defaults."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServerSettings(BaseModel):
    """Validated once at start-up; the app reads them, never changes them.

    Binds loopback by default: exposing the server is a decision the operator
    makes by passing ``host``, and ``api_key`` then guards every ``/v1`` route.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    model_name: str = Field(default="tokensched", min_length=1, description="the one model /v1/models lists")
    api_key: str | None = Field(
        default=None, min_length=1, repr=False, description="if set, /v1 routes need 'Authorization: Bearer <key>'"
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger request bodies get 413")
    default_max_tokens: int = Field(default=256, ge=1, description="when a request names no max_tokens")
    max_stop_sequences: int = Field(default=8, ge=0)
    retry_after_s: int = Field(default=1, ge=1, description="the Retry-After a 429 carries")
    session_header: str | None = Field(
        default="X-Session-ID",
        min_length=1,
        description="header naming the session a request belongs to, when its body has no session_id",
    )
