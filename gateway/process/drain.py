"""SIGTERM: report not-ready at once, close connections with 1012 spread over the
drain window so clients do not all reconnect at the same moment, exit within it.

`DrainingServer` is uvicorn's server (its quiet main loop) with the first
SIGTERM/SIGINT turned into a drain; uvicorn's own shutdown then finds little
or nothing left to close. A second signal stops at once, as uvicorn would. It
also picks the transports the clients' sockets get (SOCKET_TRANSPORT).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType
from typing import Final

import uvicorn

from gateway.process import heap
from gateway.process.replica import Replica
from gateway.process.transports import serve_clients_with
from gateway.wire.connection import SERVICE_RESTART, SHUTDOWN_REASON
from shared.quiet_server import QuietServer

# Closes go out over the first part of the window, the rest is for goodbyes and exit.
SPREAD_FRACTION: Final = 0.5
WAIT_FRACTION: Final = 0.75

logger = logging.getLogger(__name__)


async def drain(replica: Replica) -> None:
    """Close every session with 1012, spread over the replica's drain window."""
    replica.sessions.draining = True
    loop = asyncio.get_running_loop()
    window = replica.settings.drain_seconds
    start = loop.time()
    sessions = list(replica.sessions)
    logger.info("draining", extra={"connections": len(sessions), "drainSeconds": window})
    for index, session in enumerate(sessions):
        delay = start + window * SPREAD_FRACTION * index / len(sessions) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        session.close(SERVICE_RESTART, SHUTDOWN_REASON)
    try:
        async with asyncio.timeout_at(start + window * WAIT_FRACTION):
            await replica.sessions.idle.wait()
    except TimeoutError:
        logger.warning("drain window over", extra={"connections": len(replica.sessions)})


class DrainingServer(QuietServer):
    """A uvicorn server whose first shutdown signal drains the replica first."""

    def __init__(self, config: uvicorn.Config, replica: Replica) -> None:
        super().__init__(config)
        self._replica = replica
        # True from the first shutdown signal on.
        self._drain_requested = False
        # The drain in progress; None until the first signal.
        self._drain_task: asyncio.Task[None] | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn creates its listening server in `startup`: pick the clients' transports first.
        transport = self._replica.settings.socket_transport
        serve_clients_with(asyncio.get_running_loop(), transport)
        logger.info("serving clients", extra={"socketTransport": transport})
        await super().startup(sockets)
        # The lifespan has run: what exists now lives as long as the process.
        heap.freeze_startup_heap()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recording the signal: uvicorn would re-raise it after shutdown and the
        # process would die of SIGTERM instead of exiting 0.
        if self._loop is not None and not self._drain_requested and not self.should_exit:
            self._drain_requested = True
            self._loop.call_soon_threadsafe(self._begin_drain)
            return
        self.should_exit = True
        if sig == signal.SIGINT:
            self.force_exit = True

    def _begin_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.create_task(self._drain_then_exit(), name="drain")

    async def _drain_then_exit(self) -> None:
        try:
            await drain(self._replica)
        finally:
            self.should_exit = True
