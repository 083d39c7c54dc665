"""Run a replica under uvicorn: one process, or WORKERS processes sharing one socket."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import sys
from types import FrameType
from typing import Final

import uvicorn
from starlette.applications import Starlette

from gateway import heap
from gateway.app import create_app
from gateway.drain import DrainingServer
from shared.logs import configure, uvicorn_log_config
from shared.settings import GatewaySettings, fail

# The contract's frame limit: larger client frames are closed with 1009.
MAX_FRAME_BYTES: Final = 65_536
# WS_IMPL -> uvicorn's `ws`. "fast" is uvicorn's sans-I/O protocol plus pre-framed,
# coalesced writes (gateway/fastws.py); "auto" takes it: fastest in `make bench` and it
# passes the whole gateway suite (README: Fan-out performance).
WS_IMPLEMENTATIONS: Final = {
    "auto": "gateway.fastws:FastWebSocketProtocol",
    "fast": "gateway.fastws:FastWebSocketProtocol",
    "websockets": "websockets",
    "websockets-sansio": "websockets-sansio",
    "wsproto": "wsproto",
}

logger = logging.getLogger(__name__)


def uvicorn_config(settings: GatewaySettings, app: Starlette) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=WS_IMPLEMENTATIONS[settings.ws_impl],
        ws_max_size=MAX_FRAME_BYTES,
        ws_ping_interval=settings.ping_interval_seconds,
        ws_ping_timeout=settings.ping_timeout_seconds,
        # Compression would run once per watcher for every message: fan-out cost, not savings.
        ws_per_message_deflate=False,
        log_config=uvicorn_log_config(settings.log_level),
        lifespan="on",
        # The drain closed the sessions already; what is left gets this long.
        timeout_graceful_shutdown=1,
    )


class NoFrameTraces(logging.Filter):
    """Drop the `websockets` library's debug trace of every frame.

    It quotes what clients send, `refresh_token` messages included, cut short
    so that the redaction in `shared.logs` cannot recognise the token.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in ("< %s", "> %s")


def serve(settings: GatewaySettings, sockets: list[socket.socket] | None = None) -> None:
    """Serve one replica in this process until drained."""
    try:
        app = create_app(settings)
    except ValueError as error:  # a JWT key that cannot verify tokens; the text names it
        fail(str(error))
    config = uvicorn_config(settings, app)
    logging.getLogger("uvicorn.error").addFilter(NoFrameTraces())
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
