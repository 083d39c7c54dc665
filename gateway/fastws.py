"""WS_IMPL=fast: uvicorn's sans-I/O WebSocket protocol plus a way to write pre-built frames.

A server's frames are unmasked, so one text frame built per message is valid
on every connection. The protocol offers itself to the app as a `FrameSink`
in the ASGI scope's extensions; the writer then writes whole frames (several
coalesced into one `write()`) to its transport, instead of one `send()`
coroutine per delivery that frames the same text again for each watcher.
Closes are written at once too (`close_now`). Everything else (handshake,
client frames, pings, the 1009 limit) stays uvicorn's.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final, Protocol

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState

from gateway.mailbox import Flag, Mailbox

# The scope extension under which the protocol offers itself.
FRAME_SINK_EXTENSION: Final = "seatcast.frame_sink"
TEXT_OPCODE: Final = 0x81  # FIN + text


class FrameSink(Protocol):
    """A connection that takes pre-framed bytes straight on its transport.

    The writer calls the transport itself: these are C methods under uvloop,
    and a Python method around them per delivery was a measurable share of
    the fan-out (issue 4's profile).
    """

    # The connection's transport; `get_write_buffer_size()` is the slow-consumer measure.
    transport: asyncio.Transport
    # True once a close frame went out: no data frame may follow it.
    close_sent: bool

    def close_now(self, code: int, reason: str) -> None: ...


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented WebSocket text frame carrying `payload`."""
    size = len(payload)
    if size < 126:
        header = bytes((TEXT_OPCODE, size))
    elif size < 65_536:
        header = bytes((TEXT_OPCODE, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((TEXT_OPCODE, 127)) + size.to_bytes(8, "big")
    return header + payload


def frame_sink(connection: object) -> FrameSink | None:
    """The sink of a Starlette `WebSocket` served by `FastWebSocketProtocol`, else None."""
    scope: dict[str, Any] = getattr(connection, "scope", None) or {}
    extensions = scope.get("extensions") or {}
    sink: FrameSink | None = extensions.get(FRAME_SINK_EXTENSION)
    return sink


class FastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol that also accepts whole frames from the app."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Same use, a fifth of an idle connection's memory less (gateway/mailbox.py).
        self.queue = Mailbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # A refused handshake never builds a scope. Otherwise the ASGI task was only
        # created, not started: the scope can still be extended.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][FRAME_SINK_EXTENSION] = self
            # The handshake request is read: the response to it is built and the scope
            # has its own copy of the headers. websockets' parser would keep it, and
            # its headers, for the connection's life (2 KiB of every idle client).
            event.headers.clear()
            self.request = None  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        # The scope refers back to this protocol: without this cycle, a closed
        # connection is freed by reference counting, not left for the collector.
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(FRAME_SINK_EXTENSION, None)

    def close_now(self, code: int, reason: str) -> None:
        """Send a close frame at once, without awaiting, and end the app's `receive()`.

        uvicorn's `websocket.close` path, minus its wait for the transport to
        drain: a connection needs no task of its own to close. The close frame
        queues behind whatever the transport holds; a peer that has not
        answered it after `close_timeout` (10 s) is dropped.
        """
        if self.close_sent or self.transport.is_closing():
            return
        try:
            self.conn.send_close(code, reason)
        except InvalidState:  # the client's close got here first: uvicorn answers it
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        # Not `transport.close`, which waits for the buffer to drain: a peer that never
        # reads would keep its connection, and the frames queued for it, for good.
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.abort)

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Sent; only a rejection before accepting would still need it.
            self.response.headers.clear()
