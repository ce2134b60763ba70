"""A cluster spec refuses what cannot run, before any process starts."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokensched.cluster import Cluster, ClusterError, ClusterSpec, RouterPolicy


def test_defaults_are_two_cache_aware_replicas_on_loopback() -> None:
    spec = ClusterSpec()
    assert (spec.replicas, spec.router, spec.host) == (2, RouterPolicy.CACHE_AWARE, "127.0.0.1")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"replicas": 0}, "greater than or equal to 1"),
        ({"router": "fastest"}, "cache_aware"),
        ({"replicas": 2, "replica_ports": (9001,)}, "1 ports for 2 replicas"),
        ({"gateway_port": 9000, "prometheus_port": 9000}, "ports must differ"),
        ({"replicas": 1, "replica_ports": (9000,), "gateway_port": 9000}, "ports must differ"),
        ({"flavour": "x"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_spec_is_a_validation_error_naming_the_fault(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ClusterSpec.model_validate(fields)


def test_a_missing_gateway_binary_is_a_clear_error_and_starts_nothing() -> None:
    cluster = Cluster(ClusterSpec(smg_binary="/nonexistent/bin/smg"))
    with pytest.raises(ClusterError, match="smg command is not installed"):
        cluster.start()
    assert cluster.members == []
