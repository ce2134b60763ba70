"""The OpenAI-compatible HTTP server (the ``server`` extra: FastAPI and uvicorn).

``import tokensched`` never imports this package, and importing this package
imports FastAPI only when one of its names is first used, so the CLI can
register ``serve`` without the extra installed.

>>> from tokensched.server import EngineRunner, create_app   # doctest: +SKIP
>>> app = create_app(EngineRunner.create(executor))           # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tokensched.server.app import create_app
    from tokensched.server.launch import BackgroundServer, serve, sim_backend, torch_backend
    from tokensched.server.metrics import ServerMetrics
    from tokensched.server.runner import EngineRunner, EngineStopped
    from tokensched.server.settings import ServerSettings
    from tokensched.server.tokenizer import ByteTokenizer, StreamDecoder, Tokenizer, render_chat

_HOMES = {
    "create_app": "app",
    "BackgroundServer": "launch",
    "serve": "launch",
    "sim_backend": "launch",
    "torch_backend": "launch",
    "ServerMetrics": "metrics",
    "EngineRunner": "runner",
    "EngineStopped": "runner",
    "ServerSettings": "settings",
    "ByteTokenizer": "tokenizer",
    "StreamDecoder": "tokenizer",
    "Tokenizer": "tokenizer",
    "render_chat": "tokenizer",
}

__all__ = [
    "BackgroundServer",
    "ByteTokenizer",
    "EngineRunner",
    "EngineStopped",
    "ServerMetrics",
    "ServerSettings",
    "StreamDecoder",
    "Tokenizer",
    "create_app",
    "render_chat",
    "serve",
    "sim_backend",
    "torch_backend",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'tokensched.server' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tokensched.server.{home}"), name)
