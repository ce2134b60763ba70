"""How one server instance behaves at its edge: address, auth, limits, timeouts, defaults."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MetricsPrefix = Literal["tokensched", "vllm"]


class ServerSettings(BaseModel):
    """Validated once at start-up; the app reads them, never changes them.

    Binds loopback by default: exposing the server is a decision the operator
    makes by passing ``host``, and ``api_key`` then guards every ``/v1`` route.
    The limits default to values that keep one misbehaving client from
    taking the server away from the others (see ``docs/server.md``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=0, le=65535, description="0 picks a free port")
    model_name: str = Field(default="tokensched", min_length=1, description="the one model /v1/models lists")
    api_key: str | None = Field(
        default=None, repr=False, description="if set, /v1 routes need 'Authorization: Bearer <key>'"
    )
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="larger request bodies get 413")
    max_discard_bytes: int = Field(
        default=64 << 20,
        ge=0,
        description="a refused body up to this size is read and dropped before the 413, so clients that send "
        "the whole body before reading (urllib, http.client) read the 413; larger ones are cut off",
    )
    default_max_tokens: int = Field(default=256, ge=1, description="when a request names no max_tokens")
    max_stop_sequences: int = Field(default=8, ge=0)
    retry_after_s: int = Field(default=1, ge=1, description="the Retry-After a 429 carries")
    session_header: str | None = Field(
        default="X-Session-ID",
        min_length=1,
        description="header naming the session a request belongs to, when its body has no session_id",
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description="open connections at most (also capped below the process's file-descriptor limit); "
        "past it the oldest idle connection is closed, or the new one gets 503 if none is idle",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a connection that has not sent a whole request head within this is closed"
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a request whose whole body has not arrived within this of its head gets 408 and is closed",
    )
    keep_alive_timeout_s: float = Field(
        default=5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_requests_per_client: int | None = Field(
        default=256, ge=1, description="unfinished requests one client address may have; past it 429 (None: no cap)"
    )
    drain_timeout_s: float = Field(
        default=5.0, ge=0, description="on SIGTERM/SIGINT, running requests get this long before they are aborted"
    )
    stats_interval_s: float = Field(default=10.0, ge=0, description="a stats log line this often (0: never)")
    shed_log_interval_s: float = Field(
        default=10.0, gt=0, description="refused connections and requests are summed into one log line this often"
    )
    metrics_prefix: MetricsPrefix = Field(
        default="tokensched",
        description="'vllm' names the shared metrics vllm:... so vLLM's Grafana dashboard reads them unchanged",
    )

    @field_validator("api_key")
    @classmethod
    def _key_not_blank(cls, value: str | None) -> str | None:
        # fail closed: an empty TOKENSCHED_API_KEY= must not quietly turn auth off
        if value is not None and not value.strip():
            raise ValueError("api_key is empty or whitespace; set a real key or leave it unset to serve without auth")
        if value is not None and value != value.strip():
            raise ValueError("api_key has leading or trailing whitespace, which no client could send back")
        return value
