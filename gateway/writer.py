"""One connection's outbound queue, bounded in bytes, drained by one writer task.

The hub only calls `offer`, which never awaits: a client that stops reading
fills its own queue, and the overflow closes that client with 4008 from its
writer task while everyone else keeps receiving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from starlette.websockets import WebSocketDisconnect

from gateway.fastws import FrameSink
from gateway.metrics import Stats
from gateway.publication import Outgoing, Publication

SLOW_CONSUMER: Final = 4008
SLOW_CONSUMER_REASON: Final = "Slow consumer: outbound buffer overflowed"

logger = logging.getLogger(__name__)


class Socket(Protocol):
    """What the writer needs of a Starlette `WebSocket`."""

    async def send(self, message: Any) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


class Writer:
    """Queue frames for one client and write them in order from `run`."""

    def __init__(
        self,
        socket: Socket,
        limit_bytes: int,
        stats: Stats,
        observe_latency: Callable[[float], None],
        close_timeout: float,
        sink: FrameSink | None = None,
    ) -> None:
        self._socket = socket
        # Set when the connection takes pre-built frames (WS_IMPL=fast): then frames are
        # gathered in `_frames` and written together once per loop turn, with no task switch.
        self._sink = sink
        self._frames: list[Outgoing] = []
        self._limit_bytes = limit_bytes
        self._stats = stats
        self._observe_latency = observe_latency
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

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    def offer(self, frame: Outgoing) -> bool:
        """Queue `frame`; False when closing, or when it overflowed the buffer (then 4008)."""
        if self.close_request is not None:
            return False
        if self._sink is not None:
            return self._offer_frame(frame, self._sink)
        # One frame always fits, so a small buffer never refuses a lone large message.
        if self._pending_bytes and self._pending_bytes + frame.size > self._limit_bytes:
            self._stats.slow_consumer_closes += 1
            self.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            return False
        self._queue.append(frame)
        self._pending_bytes += frame.size
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

    def _offer_frame(self, frame: Outgoing, sink: FrameSink) -> bool:
        # The transport's own buffer is the outbound queue; what waits for this loop
        # turn's write counts too. One frame always fits.
        pending = self._pending_bytes + sink.buffered_bytes()
        if pending and pending + frame.size > self._limit_bytes:
            self._stats.slow_consumer_closes += 1
            self.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)
            return False
        if not self._frames:
            asyncio.get_running_loop().call_soon(self._flush)
        self._frames.append(frame)
        self._pending_bytes += frame.size
        return True

    def _flush(self) -> None:
        """Write every frame gathered this loop turn in one `write()` (a burst coalesces)."""
        frames, self._frames = self._frames, []
        self._pending_bytes = 0
        if not frames or self.close_request is not None or self._sink is None:
            return
        data = frames[0].frame if len(frames) == 1 else b"".join([f.frame for f in frames])
        if not self._sink.write_frames(data):
            return
        now = time.time()
        for frame in frames:
            if isinstance(frame, Publication):
                self._stats.deliveries += 1
                if frame.published_at is not None:
                    self._observe_latency(now - frame.published_at)

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
            if isinstance(frame, Publication):
                self._stats.deliveries += 1
                if frame.published_at is not None:
                    self._observe_latency(time.time() - frame.published_at)

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
