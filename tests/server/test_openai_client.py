"""The official ``openai`` client against a live server: completions and chat, streamed and whole."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from openai import OpenAI

from tests.server.conftest import MODEL, Live, live_server, sim


def client(live: Live, api_key: str = "unused") -> OpenAI:
    return OpenAI(base_url=live.v1, api_key=api_key, max_retries=0, timeout=30.0)


def test_streamed_completion_delivers_max_tokens_characters(sim_server: Live) -> None:
    stream = client(sim_server).completions.create(
        model=MODEL, prompt="Once upon a time", max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert len(text) == 12  # the simulator's ids render as one printable character each
    finals = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices and chunk.choices[0].finish_reason]
    assert finals == ["length"]
    usage = chunks[-1].usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (len("Once upon a time"), 12)


def test_streamed_chat_opens_with_the_assistant_role_and_ends_with_a_reason(sim_server: Live) -> None:
    stream = client(sim_server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}],
        max_tokens=9,
        stream=True,
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(chunk.choices[0].delta.content or "" for chunk in chunks)
    assert len(content) == 9
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len({chunk.id for chunk in chunks}) == 1


def test_whole_completion_and_chat_report_usage(sim_server: Live) -> None:
    api = client(sim_server)
    completion = api.completions.create(model=MODEL, prompt=[1, 2, 3, 4], max_tokens=5)
    assert len(completion.choices[0].text) == 5
    assert completion.usage is not None and completion.usage.total_tokens == 9
    chat = api.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert chat.choices[0].message.role == "assistant"
    assert len(chat.choices[0].message.content or "") == 3
    assert chat.choices[0].finish_reason == "length"


def test_several_prompts_are_answered_as_several_choices(sim_server: Live) -> None:
    completion = client(sim_server).completions.create(model=MODEL, prompt=["a", "bb", "ccc"], max_tokens=4)
    assert sorted(choice.index for choice in completion.choices) == [0, 1, 2]
    assert all(len(choice.text) == 4 for choice in completion.choices)
    assert completion.usage is not None and completion.usage.prompt_tokens == 6


def test_models_lists_the_served_model(sim_server: Live) -> None:
    models = client(sim_server).models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_an_unknown_model_is_a_404(sim_server: Live) -> None:
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client(sim_server).completions.create(model="gpt-9", prompt="x", max_tokens=1)


def test_an_api_key_guards_the_v1_routes_but_not_health_or_metrics() -> None:
    with live_server(*sim(), api_key="s3cret") as live:
        with pytest.raises(openai.AuthenticationError):
            client(live, api_key="wrong").completions.create(model=MODEL, prompt="x", max_tokens=1)
        anonymous = httpx.post(live.v1 + "/completions", json={"model": MODEL, "prompt": "x"}, timeout=10)
        assert anonymous.status_code == 401
        assert anonymous.headers["www-authenticate"] == "Bearer"
        answer = client(live, api_key="s3cret").completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert len(answer.choices[0].text) == 2
        assert httpx.get(live.url + "/health", timeout=10).status_code == 200
        assert httpx.get(live.url + "/metrics", timeout=10).status_code == 200


def test_the_session_header_names_the_requests_session(sim_server: Live) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "turn one"}], "max_tokens": 4000, "stream": True}
    with httpx.stream(
        "POST", sim_server.v1 + "/chat/completions", json=body, headers={"X-Session-ID": "s-42"}, timeout=30.0
    ) as response:
        lines = response.iter_lines()
        first = json.loads(next(lines).removeprefix("data: "))
        assert sim_server.runner.scheduler.get(first["id"]).session_id == "s-42"
    too_long = httpx.post(
        sim_server.v1 + "/chat/completions", json=body | {"stream": False}, headers={"X-Session-ID": "s" * 300}
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "session_id"


def test_a_later_turn_reports_the_prompt_tokens_the_prefix_cache_served(sim_server: Live) -> None:
    api = client(sim_server)
    history: list[dict[str, str]] = [{"role": "system", "content": "You answer briefly. " * 10}]
    history.append({"role": "user", "content": "first question"})
    first = api.chat.completions.create(model=MODEL, messages=history, max_tokens=8)  # type: ignore[arg-type]
    history += [{"role": "assistant", "content": first.choices[0].message.content or ""}]
    history += [{"role": "user", "content": "second question"}]
    second = api.chat.completions.create(model=MODEL, messages=history, max_tokens=8)  # type: ignore[arg-type]
    assert first.usage is not None and second.usage is not None
    assert first.usage.prompt_tokens_details is not None and second.usage.prompt_tokens_details is not None
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    # the first turn's whole blocks (system prompt and question) come from the cache
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached is not None
    assert cached >= (first.usage.prompt_tokens // 16) * 16 - 16
    assert cached % 16 == 0
