"""Replicas behind a model gateway: ``tokensched cluster`` and the :class:`Cluster` it runs.

N ``tokensched serve`` processes on loopback ports and one SGLang Model
Gateway (``smg launch``, the ``cluster`` extra) in front of them, started in
order, checked healthy, and stopped cleanly. See ``docs/cluster.md``.

Names load on first use, so the CLI can register ``cluster`` without httpx
(the ``server`` extra) installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokensched.cluster.launcher import Cluster, ClusterError, Member, find_smg, free_port
    from tokensched.cluster.spec import ClusterSpec, RouterPolicy

_HOMES = {
    "Cluster": "launcher",
    "ClusterError": "launcher",
    "Member": "launcher",
    "find_smg": "launcher",
    "free_port": "launcher",
    "ClusterSpec": "spec",
    "RouterPolicy": "spec",
}

__all__ = ["Cluster", "ClusterError", "ClusterSpec", "Member", "RouterPolicy", "find_smg", "free_port"]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tokensched.cluster' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tokensched.cluster.{home}"), name)
