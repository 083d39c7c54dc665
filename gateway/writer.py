"""One connection's outbound queue, bounded in bytes, sent by one writer task.

The hub only calls `offer`, which never awaits: a client that stops reading
fills its own queue, and the overflow closes that client with 4008 from its
writer task while everyone else keeps receiving. This is the path of
uvicorn's own WebSocket implementations; WS_IMPL=fast has `FrameWriter`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final, Protocol

from starlette.websockets import WebSocketDisconnect

from gateway.metrics import Stats
from gateway.publication import Outgoing

SLOW_CONSUMER: Final = 4008
SLOW_CONSUMER_REASON: Final = "Slow consumer: outbound buffer overflowed"

logger = logging.getLogger(__name__)


class Socket(Protocol):
    """What the writer needs of a Starlette `WebSocket`."""

    async def send(self, message: Any) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class DirectTransport(Protocol):
    """What the hub's direct path calls on a connection's transport (C methods under uvloop)."""

    def write(self, data: bytes) -> None: ...

    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


class Outbound(Protocol):
    """What the hub and the session need of a connection's outbound side."""

    close_request: tuple[int, str] | None
    peer_closed: bool

    def offer(self, frame: Outgoing) -> bool: ...

    def gather(self, frame: Outgoing) -> bool:
        """`offer`, but written no sooner than the end of this loop turn (a burst)."""
        ...

    def go_direct(self, subscription: Watching) -> None:
        """`subscription` is live: let the hub write to its transport, when that is safe."""
        ...

    def forget(self, subscription: Watching) -> None:
        """`subscription` left the hub: no direct writes for it any more."""
        ...

    def close(self, code: int, reason: str) -> None: ...

    def peer_gone(self) -> None: ...


class Watching(Protocol):
    """A subscription, as its writer sees it: the hub writes to its transport while attached."""

    def attach_transport(self, transport: DirectTransport) -> None: ...

    def detach_transport(self) -> None: ...


class Writer:
    """Queue frames for one client and send them in order from `run`."""

    __slots__ = (
        "_close_timeout",
        "_limit_bytes",
        "_pending_bytes",
        "_queue",
        "_socket",
        "_stats",
        "_wakeup",
        "close_request",
        "peer_closed",
    )

    def __init__(
        self, socket: Socket, limit_bytes: int, stats: Stats, close_timeout: float
    ) -> None:
        self._socket = socket
        self._limit_bytes = limit_bytes
        self._stats = stats
        self._close_timeout = close_timeout
        # Frames not yet handed to the socket, oldest first.
        self._queue: deque[Outgoing] = deque()
        # Bytes in `_queue` plus the frame being written now.
        self._pending_bytes = 0
        # Set whenever there is something new for `run` to do.
        self._wakeup = asyncio.Event()
        # (code, reason) once a close is requested; None while open.
        self.close_request: tuple[int, str] | None = None
        # True once the reader saw the client's close: the server must not send one now.
        self.peer_closed = False

    def offer(self, frame: Outgoing) -> bool:
        """Queue `frame`; False when closing, or when it overflowed the buffer (then 4008)."""
        if self.close_request is not None:
            return False
        # One frame always fits, so a small buffer never refuses a lone large message.
        pending = self._pending_bytes
        if pending and pending + frame.size > self._limit_bytes:
            self._stats.slow_consumer_closes += 1
            self.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            return False
        self._pending_bytes = pending + frame.size
        self._queue.append(frame)
        self._wakeup.set()
        return True

    # The task sends in order and coalesces nothing: gathering is queueing.
    gather = offer

    def go_direct(self, subscription: Watching) -> None:
        """Never: frames go through the socket's `send` coroutine, one at a time."""

    def forget(self, subscription: Watching) -> None:
        """Nothing to forget: see `go_direct`."""

    def close(self, code: int, reason: str) -> None:
        """Drop what is queued and close the socket soon with `code`; the first request wins."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason)
        self._queue.clear()
        self._pending_bytes = 0
        self._wakeup.set()

    async def run(self) -> None:
        """Write queued frames until a close was requested and sent, or the peer is gone."""
        try:
            while self.close_request is None:
                await self._wakeup.wait()
                self._wakeup.clear()
                await self._write_queued()
            await self._send_close(*self.close_request)
        except WebSocketDisconnect:
            return

    async def _write_queued(self) -> None:
        queue = self._queue
        while queue and self.close_request is None:
            frame = queue.popleft()
            await self._socket.send(frame.asgi)
            self._pending_bytes -= frame.size
            self._stats.deliveries += frame.deliveries

    def peer_gone(self) -> None:
        """The client closed (or vanished): stop writing and never send a close frame."""
        self.peer_closed = True
        self.close(1000, "")

    async def _send_close(self, code: int, reason: str) -> None:
        # After the client's close, uvicorn refuses another `websocket.close` (RuntimeError
        # 'Unexpected ASGI message'); the closing handshake is already the server's business.
        if self.peer_closed:
            return
        # A peer that never reads never lets the close frame out: give up after a while
        # and let the server drop the connection when the handler returns.
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._socket.close(code, reason)
        except TimeoutError:
            logger.info("close frame not delivered", extra={"code": code})
