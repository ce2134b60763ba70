"""What a local cluster is: N replicas, one gateway, the router policy, and their ports.

Validated once (pydantic), so a bad replica count or an unknown policy is a
clear error before any process starts.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RouterPolicy(StrEnum):
    """The ``smg launch --policy`` values this launcher offers (smg 1.13.0 ``--help``)."""

    CACHE_AWARE = "cache_aware"
    ROUND_ROBIN = "round_robin"
    CONSISTENT_HASHING = "consistent_hashing"
    POWER_OF_TWO = "power_of_two"
    LEAST_LOAD = "least_load"
    RANDOM = "random"
    PREFIX_HASH = "prefix_hash"


class ClusterSpec(BaseModel):
    """N ``tokensched serve`` replicas behind one ``smg launch`` gateway, all on ``host``.

    Ports left at 0 are picked free at start. ``serve_args`` and ``smg_args``
    pass straight through to every replica and to the gateway (for example
    ``["--realtime", "0"]`` or ``["--cache-threshold", "0.5"]``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    replicas: int = Field(default=2, ge=1, le=64)
    router: RouterPolicy = RouterPolicy.CACHE_AWARE
    host: str = Field(default="127.0.0.1", min_length=1, description="every process binds here (loopback by default)")
    gateway_port: int = Field(default=0, ge=0, le=65535, description="0: a free port")
    prometheus_port: int = Field(default=0, ge=0, le=65535, description="the gateway's /metrics; 0: a free port")
    replica_ports: tuple[int, ...] = Field(default=(), description="one per replica; empty: free ports")
    model_name: str = Field(default="tokensched", min_length=1)
    routing_key_header: str | None = Field(
        default="X-Session-ID",
        min_length=1,
        description="smg --routing-key-headers: the header consistent_hashing keys on (tokensched serve reads the "
        "same header as the session id); None leaves smg's default",
    )
    serve_args: tuple[str, ...] = ()
    smg_args: tuple[str, ...] = ()
    smg_binary: str | None = Field(default=None, description="the smg command (default: beside python, or PATH)")
    startup_timeout_s: float = Field(default=60.0, gt=0)
    stop_timeout_s: float = Field(default=10.0, gt=0, description="per process, after SIGTERM, before SIGKILL")
    health_check_interval_s: int = Field(default=1, ge=1, description="smg --health-check-interval-secs")
    load_monitor_interval_s: int = Field(default=1, ge=1, description="smg --load-monitor-interval")

    @model_validator(mode="after")
    def _ports_match_replicas(self) -> ClusterSpec:
        if self.replica_ports and len(self.replica_ports) != self.replicas:
            raise ValueError(f"replica_ports names {len(self.replica_ports)} ports for {self.replicas} replicas")
        chosen = [p for p in (self.gateway_port, self.prometheus_port, *self.replica_ports) if p]
        if len(chosen) != len(set(chosen)):
            raise ValueError(
                f"ports must differ; got gateway {self.gateway_port}, prometheus {self.prometheus_port}, "
                f"replicas {list(self.replica_ports)}"
            )
        return self
