"""Run a replica under uvicorn: one process, or WORKERS processes sharing one socket."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from types import FrameType

import uvicorn
from starlette.applications import Starlette

from gateway.process import heap
from gateway.process.app import create_app
from gateway.process.drain import DrainingServer
from gateway.wire.connection import WebSocketConnection
from shared.logs import configure, uvicorn_log_config
from shared.settings import GatewaySettings, fail

logger = logging.getLogger(__name__)


def uvicorn_config(settings: GatewaySettings, app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # uvicorn serves HTTP and hands every upgrade to the gateway's own WebSocket
        # protocol; its limits and keepalive come from the gateway's settings.
        ws=WebSocketConnection,
        log_config=uvicorn_log_config(settings.log_level),
        lifespan="on",
        # The drain closed the sessions already; what is left gets this long.
        timeout_graceful_shutdown=1,
    )


def serve(settings: GatewaySettings, sockets: list[socket.socket] | None = None) -> None:
    """Serve one replica in this process until drained."""
    try:
        app = create_app(settings)
    except ValueError as error:  # a JWT key that cannot verify tokens; the text names it
        fail(str(error))
    config = uvicorn_config(settings, app)
    heap.tune()
    server = DrainingServer(config, app.state.replica)
    server.run(sockets)
    if not server.started:
        sys.exit(1)


def run(settings: GatewaySettings) -> None:
    if settings.workers == 1:
        serve(settings)
        return
    _supervise(settings)


def _supervise(settings: GatewaySettings) -> None:
    """WORKERS processes on one socket; a signal drains them all; exit 0 when all did."""
    listener = socket.create_server((settings.host, settings.port), backlog=2048)
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(settings, listener), name=f"gateway-worker-{n}")
        for n in range(settings.workers)
    ]
    for worker in workers:
        worker.start()

    def forward(sig: int, frame: FrameType | None) -> None:
        # Each worker drains on its own; SIGTERM is what makes it drain.
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    logger.info("workers started", extra={"workers": settings.workers, "port": settings.port})
    for worker in workers:
        worker.join()
    listener.close()
    codes = [worker.exitcode for worker in workers]
    if any(code != 0 for code in codes):
        logger.error("a worker failed", extra={"exitCodes": codes})
        sys.exit(1)


def _worker(settings: GatewaySettings, listener: socket.socket) -> None:
    configure(settings.log_level)
    logging.captureWarnings(True)
    serve(settings, sockets=[listener])
