"""With ``metrics_prefix="vllm"``, every metric vLLM's Grafana dashboard queries exists with its type and labels."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.server.conftest import MODEL, live_server, sim, wait_for
from tests.server.vllm_dashboard import DASHBOARD_METRICS

SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")


def exposition(text: str) -> tuple[dict[str, str], dict[str, list[dict[str, str]]]]:
    """Declared types by family, and the label sets of every series by series name."""
    types: dict[str, str] = {}
    series: dict[str, list[dict[str, str]]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            match = SERIES.match(line)
            assert match is not None, line
            labels = dict(pair.split("=", 1) for pair in match.group(2).split(",")) if match.group(2) else {}
            series.setdefault(match.group(1), []).append({k: v.strip('"') for k, v in labels.items()})
    return types, series


@pytest.fixture(scope="module")
def scraped() -> str:
    with live_server(*sim(), metrics_prefix="vllm", model_name="llama") as live:
        body = {"model": "llama", "prompt": "hello", "max_tokens": 4}
        assert httpx.post(live.v1 + "/completions", json=body, timeout=30).status_code == 200
        assert wait_for(lambda: "vllm:request_success_total{" in httpx.get(live.url + "/metrics", timeout=10).text)
        return httpx.get(live.url + "/metrics", timeout=10).text


@pytest.mark.parametrize(("name", "kind", "labels"), DASHBOARD_METRICS, ids=[m[0] for m in DASHBOARD_METRICS])
def test_the_dashboard_metric_exists_with_its_type_and_labels(
    scraped: str, name: str, kind: str, labels: tuple[str, ...]
) -> None:
    types, series = exposition(scraped)
    assert types.get(name) == kind, f"{name}: declared {types.get(name)!r}, the dashboard reads a {kind}"
    samples = [f"{name}_bucket", f"{name}_sum", f"{name}_count"] if kind == "histogram" else [name]
    for sample in samples:
        assert series.get(sample), f"no {sample} series"
        for label_set in series[sample]:
            assert set(labels) <= set(label_set), f"{sample} lacks {set(labels) - set(label_set)}"
            assert label_set["model_name"] == "llama"
    if kind == "histogram":
        assert all("le" in label_set for label_set in series[f"{name}_bucket"])


def test_the_template_variable_finds_the_model_among_vllm_series(scraped: str) -> None:
    _, series = exposition(scraped)
    models = {labels.get("model_name") for name, sets in series.items() if name.startswith("vllm:") for labels in sets}
    assert models == {"llama"}


def test_nothing_is_left_under_the_other_prefix_but_tokenscheds_own(scraped: str) -> None:
    types, _ = exposition(scraped)
    own = {name for name in types if name.startswith("tokensched:")}
    assert own == {
        "tokensched:num_steps_in_flight",
        "tokensched:kv_cache_pending_blocks",
        "tokensched:kv_cache_free_blocks",
        "tokensched:kv_cache_total_blocks",
        "tokensched:prefix_cache_hit_rate",
        "tokensched:num_steps_total",
        "tokensched:num_failed_steps_total",
        "tokensched:request_rejected_total",
    }
    assert MODEL not in scraped.replace("tokensched:", "")  # the served name is llama everywhere
