"""Ready-made backends and two ways to run the app: in the foreground, or on a background thread.

``sim_backend`` serves the simulated GPU (printable one-character tokens,
paced to wall time so latencies look like the simulated hardware's);
``torch_backend`` serves the tiny MLA model on CPU (real tokens from random
weights, byte-level). Both find their executor through its entry point when
called, so the server never needs torch unless asked for it, and tokensched
never imports an executor by name.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Self

import uvicorn
from fastapi import FastAPI
from uvicorn.config import LOG_LEVELS

from tokensched.executor import executor_package
from tokensched.policies.base import Policy
from tokensched.server.guard import LISTEN_BACKLOG, ConnectionGuard, guarded_protocol
from tokensched.server.report import banner
from tokensched.server.runner import EngineRunner
from tokensched.server.settings import ServerSettings
from tokensched.server.shutdown import ABORT_GRACE_S, GracefulServer
from tokensched.server.tokenizer import BYTE_VOCAB_SIZE, ByteTokenizer, Tokenizer

SIM_EOS_TOKEN_ID = BYTE_VOCAB_SIZE  # the simulated model's vocabulary is large; 256 plays end of sequence


def sim_backend(
    *,
    model: str = "dense-8b",
    gpu: str = "h100",
    tp: int = 1,
    num_kv_blocks: int | None = None,
    block_size: int = 16,
    seed: int = 0,
    realtime: float | None = 1.0,
    policy: Policy | None = None,
    check_invariants: bool = False,
    config: Mapping[str, object] | None = None,
) -> tuple[EngineRunner, Tokenizer]:
    """The simulated GPU with a model and GPU preset; ``realtime=None`` runs as fast as it can.

    Requests end at ``max_tokens``: the simulator never samples end of
    sequence unless a workload tells it when. ``config`` sets
    :class:`~tokensched.SchedulerConfig` fields beyond the pool's size.
    """
    sim = executor_package("sim")
    executor = sim.SimExecutor(
        sim.Deployment(model=model, gpu=gpu, tp=tp),
        block_size=block_size,
        eos_token_id=SIM_EOS_TOKEN_ID,
        seed=seed,
        num_kv_blocks=num_kv_blocks,
    )
    runner = EngineRunner.create(executor, policy, realtime=realtime, check_invariants=check_invariants, config=config)
    return runner, ByteTokenizer(eos_token_id=SIM_EOS_TOKEN_ID, printable=True)


def torch_backend(
    *,
    num_blocks: int = 512,
    block_size: int = 16,
    seed: int = 0,
    device: str = "cpu",
    policy: Policy | None = None,
    check_invariants: bool = False,
    config: Mapping[str, object] | None = None,
) -> tuple[EngineRunner, Tokenizer]:
    """The tiny MLA model (vocabulary: the 256 bytes) on ``device``, stepping on a worker thread."""
    torch_executor = executor_package("torch")
    model_config = torch_executor.MLAConfig.tiny(init_seed=seed)
    if model_config.vocab_size < BYTE_VOCAB_SIZE:
        raise ValueError(f"the tiny model's vocabulary ({model_config.vocab_size}) cannot hold the 256 bytes")
    executor = torch_executor.TorchExecutor(
        model_config, num_blocks=num_blocks, block_size=block_size, device=device, seed=seed, background=True
    )
    runner = EngineRunner.create(executor, policy, check_invariants=check_invariants, config=config)
    eos = BYTE_VOCAB_SIZE if model_config.vocab_size > BYTE_VOCAB_SIZE else None
    return runner, ByteTokenizer(eos_token_id=eos)


def server_for(app: FastAPI, settings: ServerSettings, *, log_level: str = "info") -> GracefulServer:
    """uvicorn under tokensched's limits: the connection guard, timeouts, and a draining shutdown."""
    guard = ConnectionGuard(
        settings.max_connections, settings.header_timeout_s, app.state.shed, body_timeout_s=settings.body_timeout_s
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        http=guarded_protocol(guard),
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout_s)),
        timeout_graceful_shutdown=max(1, round(ABORT_GRACE_S + 1)),
        access_log=False,
        backlog=LISTEN_BACKLOG,
    )
    return GracefulServer(config, app.state.drain, settings.drain_timeout_s, guard)


def serve(app: FastAPI, settings: ServerSettings, *, log_level: str = "info") -> None:
    """Serve in the foreground until SIGTERM or SIGINT, then drain (see :mod:`tokensched.server.shutdown`)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(name)s: %(message)s"))
    server_log = logging.getLogger("tokensched.server")
    server_log.addHandler(handler)
    server_log.setLevel(LOG_LEVELS.get(log_level, logging.INFO))  # uvicorn's names, "trace" included
    server = server_for(app, settings, log_level=log_level)
    limit = server.guard.limit if server.guard is not None else settings.max_connections

    def announce(url: str) -> None:
        for line in banner(app.state.runner, settings, connection_limit=limit, url=url):
            server_log.info("%s", line)

    server.announce = announce
    server.run()


class BackgroundServer:
    """uvicorn on a daemon thread, for tests and scripts; a context manager.

    Runs under the same limits as :func:`serve` when the app was built by
    :func:`~tokensched.server.create_app` with those settings.

    >>> with BackgroundServer(app) as server:   # doctest: +SKIP
    ...     httpx.get(server.url + "/health")
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, start_timeout: float = 30.0) -> None:
        settings: ServerSettings = app.state.settings
        self._server = server_for(app, settings.model_copy(update={"host": host, "port": port}), log_level="warning")
        self._thread = threading.Thread(target=self._server.run, name="tokensched-http", daemon=True)
        self._start_timeout = start_timeout
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}:{self.port}")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def stop(self, timeout: float = 15.0) -> None:
        """Drain like a SIGTERM would, then stop."""
        self._server.request_shutdown()
        self._thread.join(timeout)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
