"""The OpenAI-compatible wire format: request bodies in, responses and stream chunks out.

Requests are validated here, at the edge, so that everything behind them can
trust their values. Fields OpenAI defines but tokensched cannot honour (``n``
above 1, penalties, logit bias, tools, echo) are refused with a message that
names the field rather than silently ignored; unknown fields that only tune
a client (``user``, ``min_tokens`` and the like) are ignored, as load
generators send many. Extensions beyond OpenAI: ``top_k``, ``ignore_eos``,
``priority``, ``session_id`` and vLLM's ``cache_salt``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NonNegativeInt = Annotated[int, Field(ge=0)]


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class GenerationRequest(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, description="extension; -1 or 0 disables")
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    ignore_eos: bool = Field(default=False, description="extension: generate max_tokens whatever the model says")
    priority: int = Field(default=0, description="extension: lower runs first under the priority policy")
    session_id: str | None = Field(default=None, max_length=256, description="extension: turns of one session")
    cache_salt: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="vLLM's field: requests share prefix-cached KV only with requests of the same salt",
    )

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> GenerationRequest:
        if self.n != 1:
            raise ValueError(f"n={self.n} is not supported; send n=1 (one choice per request)")
        if self.presence_penalty != 0.0 or self.frequency_penalty != 0.0:
            raise ValueError("presence_penalty and frequency_penalty are not supported; leave them at 0")
        if self.logit_bias:
            raise ValueError("logit_bias is not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed with stream=true")
        return self

    @property
    def stop_sequences(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else self.stop
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(GenerationRequest):
    """``POST /v1/completions``. ``prompt`` is text or token ids, one prompt or several."""

    prompt: str | list[str] | list[NonNegativeInt] | list[list[NonNegativeInt]]
    echo: bool = False
    best_of: int | None = Field(default=None, ge=1)
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _refuse_unsupported_completion(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo=true is not supported")
        if self.best_of not in (None, 1):
            raise ValueError(f"best_of={self.best_of} is not supported; send best_of=1 or leave it out")
        if self.suffix:
            raise ValueError("suffix is not supported")
        if self.logprobs:
            raise ValueError("logprobs are not supported on /v1/completions; leave logprobs out")
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: one entry per choice."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [[p for p in prompt if isinstance(p, int)]]
        return [p for p in prompt if not isinstance(p, int)]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(GenerationRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _refuse_unsupported_chat(self) -> ChatCompletionRequest:
        if self.logprobs:
            raise ValueError("logprobs are not supported on /v1/chat/completions; leave logprobs out")
        if self.tools:
            raise ValueError("tools are not supported")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            raise ValueError(f"response_format {self.response_format.get('type')!r} is not supported; use 'text'")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# --- responses ---------------------------------------------------------------------------------

FinishReasonWire = Literal["stop", "length", "abort", "error"]


class PromptTokensDetails(BaseModel):
    cached_tokens: int  # prompt tokens served from the prefix cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReasonWire | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReasonWire | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class ChatDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    finish_reason: FinishReasonWire | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tokensched"
    max_model_len: int


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | int | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo
