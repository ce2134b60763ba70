"""From a validated wire request to the RequestSpecs the scheduler runs.

Refusals that need the tokenizer or the scheduler's limits (an empty prompt,
a token id past the vocabulary, a prompt that leaves no room to generate)
are decided here, before anything reaches the engine thread, and carry the
field at fault.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from pydantic import ValidationError

from tokensched import RequestSpec, SamplingParams, SchedulerConfig
from tokensched.server.errors import ApiError, from_validation_error
from tokensched.server.settings import ServerSettings
from tokensched.server.tokenizer import Tokenizer
from tokensched.server.wire import ChatCompletionRequest, CompletionRequest, GenerationRequest


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def encode_prompt(prompt: str | list[int], tokenizer: Tokenizer, param: str) -> list[int]:
    """Token ids of one prompt; token-id prompts are checked against the vocabulary."""
    if isinstance(prompt, str):
        ids = tokenizer.encode(prompt)
    else:
        ids = prompt
        vocab = tokenizer.vocab_size
        bad = next((t for t in ids if t >= vocab), None)
        if bad is not None:
            raise ApiError(400, f"token id {bad} is outside the vocabulary (size {vocab})", param=param)
    if not ids:
        raise ApiError(400, "the prompt is empty; send at least one token", param=param)
    return ids


def completion_specs(
    body: CompletionRequest, tokenizer: Tokenizer, config: SchedulerConfig, settings: ServerSettings
) -> list[RequestSpec]:
    """One spec per prompt (each becomes one choice)."""
    base = new_id("cmpl")
    prompts = body.prompts
    return [
        make_spec(
            f"{base}-{i}" if len(prompts) > 1 else base,
            encode_prompt(prompt, tokenizer, "prompt"),
            body,
            body.max_tokens,
            tokenizer,
            config,
            settings,
        )
        for i, prompt in enumerate(prompts)
    ]


def chat_spec(
    body: ChatCompletionRequest, tokenizer: Tokenizer, config: SchedulerConfig, settings: ServerSettings
) -> RequestSpec:
    try:
        prompt = tokenizer.apply_chat_template(body.messages)
    except ValueError as exc:  # the model's template refused the conversation (raise_exception)
        raise ApiError(400, str(exc), param="messages") from exc
    if not prompt:
        raise ApiError(400, "the conversation renders to an empty prompt", param="messages")
    return make_spec(new_id("chatcmpl"), prompt, body, body.requested_max_tokens, tokenizer, config, settings)


def make_spec(
    request_id: str,
    prompt: Sequence[int],
    body: GenerationRequest,
    max_tokens: int | None,
    tokenizer: Tokenizer,
    config: SchedulerConfig,
    settings: ServerSettings,
) -> RequestSpec:
    room = config.max_model_len - len(prompt)
    if room < 1:
        raise ApiError(
            400,
            f"the prompt has {len(prompt)} tokens; this model's context is {config.max_model_len} tokens "
            "and leaves no room to generate",
            code="context_length_exceeded",
        )
    if max_tokens is None:
        max_tokens = min(settings.default_max_tokens, room)
    elif max_tokens > room:
        raise ApiError(
            400,
            f"max_tokens={max_tokens} plus the prompt's {len(prompt)} tokens exceeds this model's context of "
            f"{config.max_model_len} tokens",
            param="max_tokens",
            code="context_length_exceeded",
        )
    if len(body.stop_sequences) > settings.max_stop_sequences:
        raise ApiError(400, f"at most {settings.max_stop_sequences} stop sequences are allowed", param="stop")
    try:
        sampling = SamplingParams(
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(0, body.top_k or 0),
            seed=body.seed,
        )
        return RequestSpec(
            request_id=request_id,
            prompt_token_ids=list(prompt),
            max_tokens=max_tokens,
            eos_token_id=tokenizer.eos_token_id,
            ignore_eos=body.ignore_eos,
            priority=body.priority,
            session_id=body.session_id,
            sampling=sampling,
        )
    except ValidationError as exc:
        raise from_validation_error(exc) from exc
