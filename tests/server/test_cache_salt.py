"""Tenant isolation: requests share prefix-cached KV only with requests of the same ``cache_salt``."""

from __future__ import annotations

import httpx
import pytest

from tests.server.conftest import MODEL, Live, idle_and_empty, live_server, sim, wait_for

PROMPT = "a shared system prompt that spans several KV blocks of sixteen tokens each. " * 4


def cached(live: Live, salt: str | None, route: str = "completions") -> int:
    extra = {} if salt is None else {"cache_salt": salt}
    if route == "completions":
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 2} | extra
    else:
        body = {"model": MODEL, "messages": [{"role": "system", "content": PROMPT}], "max_tokens": 2} | extra
    response = httpx.post(f"{live.v1}/{route}", json=body, timeout=30)
    assert response.status_code == 200, response.text
    assert wait_for(lambda: idle_and_empty(live))
    tokens: int = response.json()["usage"]["prompt_tokens_details"]["cached_tokens"]
    return tokens


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_two_salts_never_share_cached_tokens_and_one_salt_does(route: str) -> None:
    with live_server(*sim()) as live:
        assert cached(live, "tenant-a", route) == 0
        assert cached(live, "tenant-a", route) > 0  # same tenant: its own earlier prompt is served from cache
        assert cached(live, "tenant-b", route) == 0  # another tenant never sees tenant-a's KV
        assert cached(live, None, route) == 0  # nor does an unsalted request
        assert cached(live, "tenant-b", route) > 0


@pytest.mark.parametrize("salt", ["", "x" * 1025])
def test_an_empty_or_oversized_salt_is_a_400_naming_it(salt: str) -> None:
    with live_server(*sim()) as live:
        body = {"model": MODEL, "prompt": "hi", "max_tokens": 1, "cache_salt": salt}
        response = httpx.post(live.v1 + "/completions", json=body, timeout=30)
        assert response.status_code == 400
        assert response.json()["error"]["param"] == "cache_salt"
