"""The worker routes a model gateway reads: load, server info, model info.

SGLang Model Gateway (``smg``) registers an HTTP worker by probing
``/health``, ``/v1/models``, ``/server_info`` and ``/model_info`` (falling
back to ``/get_server_info`` and ``/get_model_info``), then polls
``/loads`` and ``/v1/loads?include=...`` every ``--load-monitor-interval``
seconds to feed its load-aware policies (``cache_aware``'s balance check,
``power_of_two``, ``least_load``) and its overload protection. A worker
that answers none of the load routes is routed blind: cache-aware routing
then never spills off an overloaded replica. These routes answer in SGLang's
shapes (the fields smg's ``SchedulerLoadSnapshot`` and ``ServerInfo`` read)
with the scheduler's real numbers, taken from the stats snapshot the engine
thread publishes after every step, so a poll never touches the scheduler.

Like ``/health`` and ``/metrics`` they carry no API key: they say how busy
the replica is, not what it serves.

One deliberate gap: ``gen_throughput`` is left out (smg reads a missing
field as 0 and ``least_load`` then uses its ``--least-load-default-throughput``);
the scheduler counts finished requests' tokens, not a rate.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from tokensched.server.runner import EngineRunner
    from tokensched.server.settings import ServerSettings

router = APIRouter()

ENGINE_NAME = "tokensched"
ENGINE_VERSION = "0.1.0"


class RankLoad(BaseModel):
    """One data-parallel rank's load in SGLang's ``/v1/loads`` field names (a tokensched replica is one rank)."""

    dp_rank: int = 0
    num_running_reqs: int = Field(ge=0)
    num_waiting_reqs: int = Field(ge=0)
    num_total_reqs: int = Field(ge=0)
    num_used_tokens: int = Field(ge=0, description="KV tokens that cannot be handed out now (blocks x block size)")
    max_total_num_tokens: int = Field(ge=0, description="KV tokens the pool holds")
    token_usage: float = Field(ge=0.0, le=1.0, description="num_used_tokens / max_total_num_tokens")
    cache_hit_rate: float = Field(ge=0.0, le=1.0, description="prompt tokens served from the prefix cache, all time")
    max_running_requests: int = Field(ge=1)


class Loads(BaseModel):
    """The body of ``GET /v1/loads``: a timestamp and one entry per rank."""

    timestamp: str
    version: str = ENGINE_VERSION
    dp_rank_count: int = 1
    loads: list[RankLoad]


class ServerInfo(BaseModel):
    """The subset of SGLang's ``/server_info`` that smg turns into worker labels."""

    model_path: str
    served_model_name: str
    tokenizer_path: str | None = None
    tp_size: int = 1
    dp_size: int = 1
    pp_size: int = 1
    version: str = ENGINE_VERSION
    is_embedding: bool = False
    context_length: int
    max_total_tokens: int
    page_size: int
    max_running_requests: int
    disaggregation_mode: str = "null"


class ModelInfo(BaseModel):
    """The subset of SGLang's ``/model_info`` smg reads."""

    model_path: str
    tokenizer_path: str | None = None
    is_generation: bool = True
    model_type: str = ENGINE_NAME


def loads_of(runner: EngineRunner) -> Loads:
    """The replica's load now, from the latest stats snapshot."""
    stats, config = runner.stats, runner.config
    capacity = stats.num_total_blocks * config.block_size
    used = (stats.num_total_blocks - stats.num_free_blocks) * config.block_size
    rank = RankLoad(
        num_running_reqs=stats.num_running,
        num_waiting_reqs=stats.num_waiting,
        num_total_reqs=stats.num_running + stats.num_waiting,
        num_used_tokens=used,
        max_total_num_tokens=capacity,
        token_usage=min(1.0, max(0.0, stats.kv_usage)),
        cache_hit_rate=stats.prefix_hit_rate,
        max_running_requests=config.max_running,
    )
    return Loads(timestamp=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), loads=[rank])


def server_info_of(runner: EngineRunner, settings: ServerSettings) -> ServerInfo:
    config = runner.config
    return ServerInfo(
        model_path=settings.model_name,
        served_model_name=settings.model_name,
        context_length=config.max_model_len,
        max_total_tokens=config.num_tokens_capacity,
        page_size=config.block_size,
        max_running_requests=config.max_running,
    )


def _runner(request: Request) -> EngineRunner:
    runner: EngineRunner = request.app.state.runner
    return runner


def _settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


@router.get("/v1/loads")
async def loads(request: Request) -> JSONResponse:
    """Load per rank. ``include=`` (core, queues, memory, disagg...) is accepted; everything here is ``core``."""
    return JSONResponse(loads_of(_runner(request)).model_dump())


@router.get("/server_info")
@router.get("/get_server_info")
async def server_info(request: Request) -> JSONResponse:
    return JSONResponse(server_info_of(_runner(request), _settings(request)).model_dump())


@router.get("/model_info")
@router.get("/get_model_info")
async def model_info(request: Request) -> JSONResponse:
    name = _settings(request).model_name
    return JSONResponse(ModelInfo(model_path=name).model_dump())
