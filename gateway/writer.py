"""One connection's outbound queue, bounded in bytes.

The hub only calls `offer`, which never awaits: a client that stops reading
fills its own queue, and the overflow closes that client with 4008 from its
writer task while everyone else keeps receiving. With WS_IMPL=fast the queue
is the frames gathered this loop turn plus the transport's buffer, written by
the `Flusher`; otherwise the writer task sends the queue through the socket.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any, Final, Protocol

from starlette.websockets import WebSocketDisconnect

from gateway.fastws import FrameSink
from gateway.flusher import Flusher
from gateway.metrics import Stats
from gateway.publication import Outgoing

SLOW_CONSUMER: Final = 4008
SLOW_CONSUMER_REASON: Final = "Slow consumer: outbound buffer overflowed"

logger = logging.getLogger(__name__)


class Socket(Protocol):
    """What the writer needs of a Starlette `WebSocket`."""

    async def send(self, message: Any) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Writer:
    """Queue frames for one client and write them in order."""

    # One per connection, touched for every delivery: slots keep it small and quick.
    __slots__ = (
        "_close_timeout",
        "_flusher",
        "_frames",
        "_gathered_deliveries",
        "_limit_bytes",
        "_pending_bytes",
        "_queue",
        "_sink",
        "_socket",
        "_stats",
        "_turn",
        "_wakeup",
        "close_request",
        "peer_closed",
    )

    def __init__(
        self,
        socket: Socket,
        limit_bytes: int,
        stats: Stats,
        flusher: Flusher,
        close_timeout: float,
        sink: FrameSink | None = None,
    ) -> None:
        self._socket = socket
        # Set when the connection takes pre-built frames (WS_IMPL=fast): then frames are
        # gathered in `_frames` and the flusher writes them together at the turn's end,
        # with no task switch. Otherwise `run` sends `_queue` through the ASGI socket.
        self._sink = sink
        self._flusher = flusher
        self._frames: list[bytes] = []
        # The flusher's turn in which this writer last wrote at once (see `offer`).
        self._turn = -1
        # Publications among `_frames`: counted as deliveries once written.
        self._gathered_deliveries = 0
        self._limit_bytes = limit_bytes
        self._stats = stats
        self._close_timeout = close_timeout
        # Frames not yet handed to the socket, oldest first.
        self._queue: deque[Outgoing] = deque()
        # Bytes in `_queue` (or `_frames`) plus the frame being written now.
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
        frames = self._frames
        if self._sink is not None and not frames and self._turn != self._flusher.turn:
            # The first frame of a loop turn goes out at once; only what follows it
            # in the same turn (a burst) waits for the flusher, to share one write.
            self._turn = self._flusher.turn
            self._write(frame.frame, frame.deliveries)
            return self.close_request is None
        # One frame always fits, so a small buffer never refuses a lone large message.
        pending = self._pending_bytes
        if pending and pending + frame.size > self._limit_bytes:
            self._overflowed()
            return False
        self._pending_bytes = pending + frame.size
        if self._sink is not None:
            if not frames:
                self._flusher.gathered(self)
            frames.append(frame.frame)
            self._gathered_deliveries += frame.deliveries
            return True
        self._queue.append(frame)
        self._wakeup.set()
        return True

    def close(self, code: int, reason: str) -> None:
        """Drop what is queued and close the socket soon with `code`; the first request wins."""
        if self.close_request is not None:
            return
        self.close_request = (code, reason)
        self._queue.clear()
        self._frames.clear()
        self._pending_bytes = 0
        self._wakeup.set()

    def _overflowed(self) -> None:
        self._stats.slow_consumer_closes += 1
        self.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)

    def flush(self) -> None:
        """Write the frames gathered this loop turn in one `write()` (the flusher calls this).

        The transport's own buffer is the rest of the outbound queue: what the
        kernel has not taken yet plus this turn's frames must fit the budget.
        """
        frames = self._frames
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        deliveries, self._gathered_deliveries = self._gathered_deliveries, 0
        self._pending_bytes = 0
        self._write(data, deliveries)

    def _write(self, data: bytes, deliveries: int) -> None:
        """Write frames to the transport, unless its backlog plus them overflows (4008)."""
        sink = self._sink
        assert sink is not None
        transport = sink.transport
        backlog = transport.get_write_buffer_size()
        if backlog and backlog + len(data) > self._limit_bytes:
            self._overflowed()
        elif not (sink.close_sent or transport.is_closing()):
            transport.write(data)
            self._stats.deliveries += deliveries

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
