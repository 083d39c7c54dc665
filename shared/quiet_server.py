"""uvicorn's server without its ten wake-ups a second.

uvicorn's main loop sleeps 0.1 s at a time to notice `should_exit`, and
every tenth wake-up rewrites the `Date` header its responses carry. Those
wake-ups were most of the CPU an idle gateway used: on the 2-core machines a
wake-up after a quiet spell costs far more than the work it does. A gateway
holding 5,000 idle clients used 10 to 12 ms of CPU a second with them, 2 to
3.5 ms without (`/proc`, 5 s windows), and under load they count against
every delivery in `make bench`.
Here the main loop sleeps until a signal asks it to exit, and the `Date`
header is brought up to date when a response reads it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from email.utils import formatdate

import uvicorn
from uvicorn.server import ServerState


class DatedServerState(ServerState):
    """uvicorn's server state, its default headers carrying a `Date` made when read."""

    def __init__(self, config: uvicorn.Config) -> None:
        self._config = config
        # The second the headers were made for, and the headers.
        self._second = -1
        self._headers: list[tuple[bytes, bytes]] = []
        super().__init__()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        second = int(time.time())
        if second != self._second:
            self._second = second
            date = formatdate(second, usegmt=True).encode()
            dated = [(b"date", date)] if self._config.date_header else []
            self._headers = dated + self._config.encoded_headers
        return self._headers

    @default_headers.setter
    def default_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """uvicorn assigns the headers at start: they are made when read instead."""


class QuietServer(uvicorn.Server):
    """A uvicorn server whose main loop sleeps until it must exit."""

    def __init__(self, config: uvicorn.Config) -> None:
        # Set before uvicorn's __init__, which assigns `should_exit` (the setter reads these).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exit_requested: asyncio.Event | None = None
        self._should_exit = False
        super().__init__(config)
        self.server_state = DatedServerState(config)

    @property
    def should_exit(self) -> bool:
        return self._should_exit

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._should_exit = value
        event, loop = self._exit_requested, self._loop
        if value and event is not None and loop is not None:
            # uvicorn sets it from a signal handler: wake the loop the thread-safe way.
            loop.call_soon_threadsafe(event.set)

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    async def main_loop(self) -> None:
        if self.config.limit_max_requests is not None or self.config.callback_notify is not None:
            # What uvicorn's ticks also check; not used here, but kept working.
            await super().main_loop()
            return
        self._exit_requested = asyncio.Event()
        if not self.should_exit:
            await self._exit_requested.wait()
