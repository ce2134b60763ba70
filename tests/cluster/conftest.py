"""Clusters on loopback with the real gateway (``smg``, the ``cluster`` extra), sim replicas, bounded waits.

Tests that need the gateway carry ``requires_smg``: they skip, saying why,
only when the ``smg`` command is absent. Every test here has a timeout, so a
hung process fails its test instead of the run.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tokensched.cluster import find_smg

TEST_TIMEOUT_S = 120

requires_smg = pytest.mark.skipif(
    find_smg() is None, reason="the smg command is absent: pip install 'tokensched[cluster]' (smg==1.13.0)"
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.parent == Path(__file__).parent and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT_S))


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of metric ``name`` in a Prometheus text exposition: (labels, value)."""
    out = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match["name"] == name:
            out.append((dict(_LABEL.findall(match["labels"] or "")), float(match["value"])))
    return out


def metric_sum(url: str, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``, scraped from ``url`` now."""
    text = httpx.get(url, timeout=5.0).text
    return sum(v for got, v in samples(text, name) if all(got.get(k) == w for k, w in labels.items()))


def settle(read: Callable[[], object], until: Callable[[object], bool], within_s: float = 15.0) -> object:
    """Read until ``until`` holds or ``within_s`` passes; return the last reading (the caller asserts on it)."""
    deadline = time.monotonic() + within_s
    value = read()
    while not until(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value
