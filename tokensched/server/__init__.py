"""The OpenAI-compatible HTTP server (the ``server`` extra: FastAPI and uvicorn).

Importing :mod:`tokensched` never imports this package; importing this one
imports FastAPI.

>>> from tokensched.server import EngineRunner, create_app   # doctest: +SKIP
>>> app = create_app(EngineRunner(scheduler, executor))       # doctest: +SKIP
"""

from tokensched.server.app import create_app
from tokensched.server.metrics import ServerMetrics
from tokensched.server.runner import EngineRunner, EngineStopped
from tokensched.server.settings import ServerSettings
from tokensched.server.tokenizer import ByteTokenizer, StreamDecoder, Tokenizer, render_chat

__all__ = [
    "ByteTokenizer",
    "EngineRunner",
    "EngineStopped",
    "ServerMetrics",
    "ServerSettings",
    "StreamDecoder",
    "Tokenizer",
    "create_app",
    "render_chat",
]
