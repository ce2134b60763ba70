"""The FastAPI app: OpenAI-compatible routes over an :class:`EngineRunner`.

``create_app(runner, tokenizer, settings)`` builds it; the app's lifespan
starts the runner's engine thread if nobody has yet and stops it on shutdown.
Routes: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both with
``stream``), ``GET /v1/models``, ``GET /health``, ``GET /metrics``.

A request is submitted before its response starts, so a full queue is a
real 429 and a bad prompt a real 400, even for a stream. A client that goes
away aborts its requests: mid-stream through the stream's cancellation, while
waiting for a whole answer through a watcher on the connection.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from tokensched.server import convert, gateway
from tokensched.server.admission import ClientCap
from tokensched.server.errors import ApiError, from_engine_error, from_validation_error
from tokensched.server.generation import Delta, Generation
from tokensched.server.guard import ShedLog
from tokensched.server.metrics import CONTENT_TYPE, ServerMetrics
from tokensched.server.middleware import BodyLimitMiddleware
from tokensched.server.report import StatsLine, log_stats
from tokensched.server.runner import EngineRunner
from tokensched.server.settings import ServerSettings
from tokensched.server.shutdown import Drain
from tokensched.server.tokenizer import ByteTokenizer, Tokenizer
from tokensched.server.wire import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatDelta,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    FinishReasonWire,
    GenerationRequest,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    Usage,
)

Body = TypeVar("Body", bound=BaseModel)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SESSION_ID_MAX = 256
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the answer; nobody reads it


def create_app(
    runner: EngineRunner, tokenizer: Tokenizer | None = None, settings: ServerSettings | None = None
) -> FastAPI:
    """An app serving ``runner``'s scheduler. One app per runner; the runner is not shared."""
    tokenizer = tokenizer if tokenizer is not None else ByteTokenizer()
    settings = settings if settings is not None else ServerSettings()
    metrics = ServerMetrics(settings.model_name, settings.metrics_prefix, runner.config.max_model_len)
    started = time.time()
    shed = ShedLog(settings.shed_log_interval_s)
    drain = Drain()
    client_cap = ClientCap(settings.max_requests_per_client, settings.retry_after_s, shed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = not runner.started
        if owned:
            runner.start()
        reporter = None
        if settings.stats_interval_s > 0:
            reporter = asyncio.ensure_future(log_stats(StatsLine(runner, metrics), settings.stats_interval_s))
        try:
            yield
        finally:
            if reporter is not None:
                reporter.cancel()
            shed.flush()
            if owned:
                await asyncio.to_thread(runner.stop)

    app = FastAPI(title="tokensched", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.runner = runner
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.tokenizer = tokenizer
    app.state.shed = shed
    app.state.drain = drain
    app.include_router(gateway.router)  # /v1/loads, /server_info, /model_info: what a model gateway polls
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_body_bytes,
        max_discard_bytes=settings.max_discard_bytes,
        on_reject=lambda: metrics.on_rejected("too_large"),
    )

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> Response:
        metrics.on_rejected(exc.metric_reason)
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        return await api_error(request, ApiError(400, "; ".join(str(e.get("msg")) for e in exc.errors())))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return ApiError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})).response()

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise ApiError(
                401,
                "missing or wrong API key; send 'Authorization: Bearer <key>'",
                type="authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )

    async def parse(request: Request, model: type[Body]) -> Body:
        authorize(request)
        raw = await request.body()
        try:
            body = model.model_validate_json(raw)
        except ValidationError as exc:
            raise from_validation_error(exc) from None
        if isinstance(body, GenerationRequest) and body.session_id is None and settings.session_header is not None:
            session = request.headers.get(settings.session_header)
            if session:
                if len(session) > SESSION_ID_MAX:
                    raise ApiError(
                        400,
                        f"the {settings.session_header} header is over {SESSION_ID_MAX} characters",
                        param="session_id",
                    )
                body = body.model_copy(update={"session_id": session})
        name = getattr(body, "model", settings.model_name)
        if name != settings.model_name:
            raise ApiError(
                404,
                f"model {name!r} does not exist; this server serves {settings.model_name!r}",
                param="model",
                code="model_not_found",
            )
        return body

    async def submit(request: Request, generation: Generation, num_prompts: int) -> Callable[[], None]:
        """Admit and submit ``generation``; returns what to call once its response has ended."""
        if not drain.accepting:
            raise ApiError(
                503,
                "the server is shutting down",
                type="server_error",
                headers={"Retry-After": str(settings.retry_after_s), "Connection": "close"},
            )
        max_waiting = runner.config.max_waiting
        if max_waiting is not None and num_prompts > max_waiting:
            # the queue could never take them all at once: retrying would not help, so not 429
            raise ApiError(
                400,
                f"{num_prompts} prompts in one request exceed the queue's capacity of {max_waiting}; "
                "send fewer per request",
                param="prompt",
            )
        client = request.client.host if request.client is not None else "unknown"
        client_cap.enter(client)
        try:
            await generation.submit()
        except Exception as exc:
            client_cap.leave(client)
            raise from_engine_error(exc, settings.retry_after_s) from exc
        drain.add(generation)

        def release() -> None:
            drain.discard(generation)
            client_cap.leave(client)

        return release

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health() -> Response:
        if runner.running:
            return JSONResponse({"status": "ok"})
        return ApiError(503, "engine is not running", type="server_error").response()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return PlainTextResponse(metrics.render(runner.stats, runner.spec_decode, shed.totals), media_type=CONTENT_TYPE)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        authorize(request)
        card = ModelCard(id=settings.model_name, created=int(started), max_model_len=runner.config.max_model_len)
        return JSONResponse(ModelList(data=[card]).model_dump())

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await parse(request, CompletionRequest)
        specs = convert.completion_specs(body, tokenizer, runner.config, settings)
        generation = Generation(runner, tokenizer, metrics, specs, body.stop_sequences)
        release = await submit(request, generation, len(specs))
        response_id, created = specs[0].request_id, int(time.time())

        def chunk(delta: Delta) -> BaseModel:
            choice = CompletionChoice(index=delta.index, text=delta.text, finish_reason=delta.finish_reason)
            return CompletionResponse(id=response_id, created=created, model=body.model, choices=[choice])

        if body.stream:
            usage_chunk = CompletionResponse(id=response_id, created=created, model=body.model, choices=[])
            events = _stream(generation, [], chunk, usage_chunk if body.include_usage else None, release)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        collected = await _collect(request, generation, release)
        if collected is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        texts, reasons = collected
        result = CompletionResponse(
            id=response_id,
            created=created,
            model=body.model,
            choices=[CompletionChoice(index=i, text=texts[i], finish_reason=reasons[i]) for i in range(len(specs))],
            usage=_usage(generation),
        )
        return JSONResponse(result.model_dump())

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await parse(request, ChatCompletionRequest)
        spec = convert.chat_spec(body, tokenizer, runner.config, settings)
        generation = Generation(runner, tokenizer, metrics, [spec], body.stop_sequences)
        release = await submit(request, generation, 1)
        response_id, created = spec.request_id, int(time.time())

        def chunk(delta: Delta | None) -> BaseModel:
            if delta is None:  # the opening chunk names the speaker
                choice = ChatChunkChoice(index=0, delta=ChatDelta(role="assistant", content=""))
            else:
                content = ChatDelta(content=delta.text) if delta.text or delta.finish_reason is None else ChatDelta()
                choice = ChatChunkChoice(index=delta.index, delta=content, finish_reason=delta.finish_reason)
            return ChatCompletionChunk(id=response_id, created=created, model=body.model, choices=[choice])

        if body.stream:
            usage_chunk = ChatCompletionChunk(id=response_id, created=created, model=body.model, choices=[])
            events = _stream(generation, [chunk(None)], chunk, usage_chunk if body.include_usage else None, release)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)
        collected = await _collect(request, generation, release)
        if collected is None:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        texts, reasons = collected
        message = AssistantMessage(content=texts[0])
        result = ChatCompletionResponse(
            id=response_id,
            created=created,
            model=body.model,
            choices=[ChatChoice(index=0, message=message, finish_reason=reasons[0])],
            usage=_usage(generation),
        )
        return JSONResponse(result.model_dump())

    return app


def _usage(generation: Generation) -> Usage:
    prompt, completion = generation.prompt_tokens, generation.completion_tokens
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=generation.cached_tokens),
    )


def _sse(payload: BaseModel | dict[str, object]) -> str:
    data = payload.model_dump_json(exclude_none=False) if isinstance(payload, BaseModel) else json.dumps(payload)
    return f"data: {data}\n\n"


async def _stream(
    generation: Generation,
    opening: list[BaseModel],
    chunk: Callable[[Delta], BaseModel],
    usage_chunk: BaseModel | None,
    release: Callable[[], None],
) -> AsyncIterator[str]:
    """Server-sent events for a generation; aborts it if the client leaves (the iterator is cancelled)."""
    try:
        for event in opening:
            yield _sse(event)
        async for delta in generation.deltas():
            if delta.finish_reason == "error":
                error = ErrorInfo(message="the engine failed this request", type="server_error")
                yield _sse({"error": error.model_dump()})
                continue
            yield _sse(chunk(delta))
        if usage_chunk is not None:
            yield _sse(usage_chunk.model_copy(update={"usage": _usage(generation)}))
        yield "data: [DONE]\n\n"
    finally:
        generation.abort()
        release()


async def _collect(
    request: Request, generation: Generation, release: Callable[[], None]
) -> tuple[list[str], list[FinishReasonWire]] | None:
    """Whole texts and finish reasons per choice, or None if the client left first."""

    async def gather() -> tuple[list[str], list[FinishReasonWire]]:
        texts: dict[int, list[str]] = {}
        reasons: dict[int, FinishReasonWire] = {}
        async for delta in generation.deltas():
            texts.setdefault(delta.index, []).append(delta.text)
            if delta.finish_reason is not None:
                reasons[delta.index] = delta.finish_reason
        if "error" in reasons.values():
            raise ApiError(500, "the engine failed this request", type="server_error")
        indices = sorted(reasons)
        return ["".join(texts.get(i, [])) for i in indices], [reasons[i] for i in indices]

    collector = asyncio.ensure_future(gather())
    watcher = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if collector in done:
            return collector.result()
        return None
    finally:
        watcher.cancel()
        collector.cancel()
        generation.abort()
        release()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
