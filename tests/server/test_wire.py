"""Wire models: what OpenAI clients send is accepted; what tokensched cannot honour is refused by name."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tokensched.server.errors import from_validation_error
from tokensched.server.wire import ChatCompletionRequest, CompletionRequest


def test_a_text_prompt_is_one_choice() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "hi"})
    assert body.prompts == ["hi"]
    assert body.stop_sequences == []
    assert not body.stream


def test_token_prompts_and_prompt_lists_become_one_choice_each() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": [1, 2, 3]}).prompts == [[1, 2, 3]]
    assert CompletionRequest.model_validate({"model": "m", "prompt": ["a", "b"]}).prompts == ["a", "b"]
    assert CompletionRequest.model_validate({"model": "m", "prompt": [[1], [2, 3]]}).prompts == [[1], [2, 3]]


def test_stop_accepts_a_string_or_a_list_and_drops_empty_ones() -> None:
    assert CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": "\n"}).stop_sequences == ["\n"]
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x", "stop": ["a", "", "b"]})
    assert body.stop_sequences == ["a", "b"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"n": 2}, "n=2 is not supported"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
        ({"logit_bias": {"1": 2.0}}, "logit_bias"),
        ({"echo": True}, "echo"),
        ({"best_of": 3}, "best_of=3"),
        ({"logprobs": 2}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "only allowed with stream=true"),
        ({"temperature": -1}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"prompt": []}, "empty list"),
        ({"prompt": [-3]}, "prompt"),
    ],
)
def test_unsupported_or_invalid_completion_fields_are_refused_by_name(extra: dict[str, object], needle: str) -> None:
    with pytest.raises(ValidationError) as info:
        CompletionRequest.model_validate({"model": "m", "prompt": "x"} | extra)
    error = from_validation_error(info.value)
    assert error.status == 400
    assert needle in error.message


def test_unknown_fields_that_only_tune_a_client_are_ignored() -> None:
    body = CompletionRequest.model_validate({"model": "m", "prompt": "x", "user": "u", "min_tokens": 3})
    assert body.prompts == ["x"]


def test_chat_messages_accept_text_parts_and_max_completion_tokens_wins() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
            "max_tokens": 5,
            "max_completion_tokens": 7,
        }
    )
    assert body.messages[0].text == "ab"
    assert body.requested_max_tokens == 7


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "m"}, "messages"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_a_malformed_chat_request_names_the_field_at_fault(body: dict[str, object], param: str) -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate(body)
    error = from_validation_error(info.value)
    assert error.param == param
    assert error.message.startswith(param)


def test_invalid_json_is_a_clear_400() -> None:
    with pytest.raises(ValidationError) as info:
        ChatCompletionRequest.model_validate_json(b"{not json")
    error = from_validation_error(info.value)
    assert error.status == 400
    assert "JSON" in error.message


def test_chat_refuses_tools_and_structured_output() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(ValidationError, match="tools are not supported"):
        ChatCompletionRequest.model_validate(base | {"tools": [{"type": "function"}]})
    with pytest.raises(ValidationError, match="json_object"):
        ChatCompletionRequest.model_validate(base | {"response_format": {"type": "json_object"}})
    assert ChatCompletionRequest.model_validate(base | {"response_format": {"type": "text"}}).messages
