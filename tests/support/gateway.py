"""A gateway replica served in the test's own event loop, under uvicorn, on a free port.

The replica is the real one: `create_app(settings)` and its own
`uvicorn_config`, so WebSocket upgrades reach `WebSocketConnection` exactly
as in production. Only the logging setup is left out (uvicorn would replace
the test process's logging). Being in this process, its replica (sessions,
hub, stats) and its uvicorn server (connections, tasks) can be looked at,
while clients connect over real sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Final
from unittest import mock

import uvicorn

from gateway.process import server as gateway_server
from gateway.process.app import create_app
from gateway.process.replica import Replica
from shared.settings import gateway_settings
from tests.support.ports import free_port
from tests.support.wait import async_wait_until

START_SECONDS: Final = 30.0
# uvicorn's own shutdown: connections get timeout_graceful_shutdown, the broker 3 s.
STOP_SECONDS: Final = 30.0
# Settings every test replica gets unless the test says otherwise.
DEFAULTS: Final = {
    "HOST": "127.0.0.1",
    "DRAIN_SECONDS": "0",
    "MAX_CLIENT_MESSAGES_PER_SECOND": "1000",
}


@dataclass(frozen=True, eq=False)
class Gateway:
    """A running replica: where to reach it, and its insides."""

    server: uvicorn.Server
    replica: Replica
    port: int

    @property
    def url(self) -> str:
        """The WebSocket base URL (append `/ws`, `/ws/events/1?token=…`)."""
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _listening_socket() -> socket.socket:
    """A socket listening on a free port: bound here, so uvicorn cannot fail to bind it."""
    for _ in range(20):
        try:
            return socket.create_server(("127.0.0.1", free_port()), backlog=2048)
        except OSError as error:  # taken between the look-up and the bind
            if error.errno != errno.EADDRINUSE:
                raise
    raise RuntimeError("no free port found")


@contextlib.asynccontextmanager
async def running_gateway(redis_url: str, jwt_secret: str, **env: str) -> AsyncIterator[Gateway]:
    """Serve a replica until the block ends; `env` overrides settings (`PING_INTERVAL_SECONDS="1"`).

    On exit the server is asked to stop (`should_exit`) and given
    `STOP_SECONDS`, then forced; a test may stop it earlier itself.
    """
    sock = _listening_socket()
    port = int(sock.getsockname()[1])
    settings = gateway_settings(
        {**DEFAULTS, "PORT": str(port), "REDIS_URL": redis_url, "JWT_SECRET": jwt_secret, **env}
    )
    app = create_app(settings)
    # The replica's own config, with the test process's logging left as it is.
    with mock.patch.object(gateway_server, "uvicorn_log_config", return_value=None):
        config = gateway_server.uvicorn_config(settings, app)
    server = uvicorn.Server(config)

    async def serve() -> None:
        try:
            await server.serve([sock])
        except SystemExit as error:  # uvicorn's answer to a failed startup; not for the loop
            raise RuntimeError(f"the gateway did not start (exit status {error.code})") from None

    serving = asyncio.create_task(serve(), name=f"gateway-{port}")
    try:
        await async_wait_until(
            _ready(server, serving), timeout=START_SECONDS, what="the gateway started"
        )
        if not server.started:
            raise RuntimeError("the gateway stopped while starting") from serving.exception()
        yield Gateway(server, app.state.replica, port)
    finally:
        await _stop(server, serving)
        sock.close()


StartGateway = Callable[..., Awaitable[Gateway]]


@contextlib.asynccontextmanager
async def gateways(redis_url: str, jwt_secret: str) -> AsyncIterator[StartGateway]:
    """`start(**env)` serves one more replica; all of them stop when the block ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(**env: str) -> Gateway:
            return await stack.enter_async_context(running_gateway(redis_url, jwt_secret, **env))

        yield start


def _ready(server: uvicorn.Server, serving: asyncio.Task[None]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return server.started or serving.done()

    return check


async def _stop(server: uvicorn.Server, serving: asyncio.Task[None]) -> None:
    """Ask the server to stop, wait a bounded time, then force it; raise what crashed it."""
    server.should_exit = True
    done, _ = await asyncio.wait({serving}, timeout=STOP_SECONDS)
    if not done:
        server.force_exit = True
        serving.cancel()
        await asyncio.wait({serving}, timeout=5)
        raise TimeoutError(f"the gateway did not stop within {STOP_SECONDS}s")
    error = None if serving.cancelled() else serving.exception()
    if error is not None and server.started:
        raise error
