"""One WebSocket connection: websockets' sans-I/O protocol with this server's own I/O.

uvicorn serves HTTP and hands each upgrade request to the protocol class its
`ws` setting names. It builds one with three keywords (`config`,
`server_state`, `app_state`), gives it the transport (`connection_made`) and
then the request, rebuilt as bytes (`data_received`). That is the whole seam:
from there this class owns the connection. It reads the handshake (itself
when the request is plain, else with websockets' `ServerProtocol`), parses
client frames with `ServerProtocol`, sends keepalive pings, runs the closing
handshake and answers uvicorn's `shutdown` with 1012. What an upgrade leads
to is the endpoint's decision; the app's lifespan puts the endpoint in its
state under `ENDPOINT_STATE_KEY`.

Data frames are not written here: the server's frames are built once per
message and written by the fan-out (gateway/fanout/outbound.py) to
`transport`, the same bytes for every watcher.

Only whole frames are fed to websockets: the start of an unfinished frame
waits in `_partial`. Between messages the parser then holds nothing but its
settings, so it is dropped and made again, equal, when the next frame
arrives: an idle client keeps no parser, reader or buffers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import weakref
from collections.abc import Coroutine
from typing import Any, Final, Protocol, cast

from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.wire.deadlines import Deadlines
from gateway.wire.frames import ping_frame, whole_frames_end
from gateway.wire.handshake import Upgrade, read_upgrade, refusal, switching_protocols

# Where the app's lifespan state names the endpoint that decides about upgrades.
ENDPOINT_STATE_KEY: Final = "seatcast.websocket_endpoint"
# The contract's limit on a client frame (and message): larger ones are closed with 1009.
MAX_FRAME_BYTES: Final = 65_536
# A peer that has not answered our close frame by then is dropped.
CLOSE_TIMEOUT_SECONDS: Final = 10.0
# Client messages waiting for the reader before the socket stops being read.
INBOX_HIGH_WATER: Final = 16
# Keepalive pings and their timeouts are due at most this late.
PING_RESOLUTION_SECONDS: Final = 0.1
# The contract's close for a replica shutting down: reconnect elsewhere.
SERVICE_RESTART: Final = 1012
SHUTDOWN_REASON: Final = "Server shutting down, reconnect elsewhere"

_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)

logger = logging.getLogger(__name__)
# websockets' own log: its debug trace quotes client frames (tokens included) and it
# says "connection closed" for every connection; only its warnings are wanted.
_PROTOCOL_LOGGER: Final = logging.getLogger("gateway.wire.websockets")
_PROTOCOL_LOGGER.setLevel(logging.WARNING)


class ServerState(Protocol):
    """What the connection uses of uvicorn's server state."""

    # Open connections; uvicorn calls `shutdown()` on each when the server stops.
    connections: set[Any]
    # Tasks uvicorn waits for (then cancels) when the server stops.
    tasks: set[asyncio.Task[None]]
    # Headers every response carries (`server`, `date`).
    default_headers: list[tuple[bytes, bytes]]


class Reader(Protocol):
    """What an accepted connection hands its client messages to."""

    def messages_arrived(self) -> None:
        """Messages wait: `take` them (in a task of the reader's, via `spawn`, to await)."""

    def closed(self) -> None:
        """The conversation is over: a close frame went out or came in, or the socket is gone.

        Called once. No message arrives after it; `take` may still return ones
        that came before.
        """


class Endpoint(Protocol):
    """What decides about an upgrade request, in `open`: `refuse` it, or `accept` it."""

    def open(self, connection: WebSocketConnection, upgrade: Upgrade) -> None: ...


class WebSocketConnection(asyncio.Protocol):
    """A server-side WebSocket connection, from the upgrade request to `connection_lost`."""

    # One per connection, for its whole life: slots keep it small.
    __slots__ = (
        "_accept_value",
        "_app_state",
        "_close_timer",
        "_fragments",
        "_inbox",
        "_loop",
        "_partial",
        "_paused",
        "_ping",
        "_ping_interval",
        "_ping_timeout",
        "_reader",
        "_server_state",
        "_state",
        "_ws",
        "transport",
    )

    def __init__(
        self, *, config: object, server_state: ServerState, app_state: dict[str, Any]
    ) -> None:
        # `config` is uvicorn's; every setting the connection needs comes from the endpoint.
        self._server_state = server_state
        self._app_state = app_state
        self._loop = asyncio.get_running_loop()
        self._state = _HANDSHAKE
        # The `Sec-WebSocket-Accept` value while the endpoint decides; None otherwise.
        self._accept_value: str | None = None
        # websockets' protocol while it holds state (a fragment, a close under way);
        # None between whole messages (see the module docstring).
        self._ws: ServerProtocol | None = None
        # The bytes of a frame that has not arrived whole yet.
        self._partial = b""
        # The frames of a fragmented message so far, and whether it is text; None between.
        self._fragments: tuple[bool, list[bytes]] | None = None
        # Client messages not yet taken by the reader, oldest first.
        self._inbox: list[str | bytes] = []
        # True while the socket is not read because the inbox is full.
        self._paused = False
        # The accepted connection's reader; None before accepting and once closed.
        self._reader: Reader | None = None
        # The payload of the ping awaiting its pong; None when none is out.
        self._ping: bytes | None = None
        self._ping_interval = 0.0
        self._ping_timeout = 0.0
        # Drops a peer that never answers the close frame; None until closing.
        self._close_timer: asyncio.TimerHandle | None = None

    # The socket's transport, from `connection_made` on (uvicorn calls it right after building).
    transport: asyncio.Transport

    # The seam with uvicorn.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self._server_state.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._state == _OPEN or self._state == _CLOSING:
            self._frames_received(data)
        elif self._state == _HANDSHAKE:
            # uvicorn hands the request on whole, as the first bytes; it is read once.
            self._handshake(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        self._stop_keepalive()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._server_state.connections.discard(self)
        self._ws = None
        self._report_closed()

    def shutdown(self) -> None:
        """The server stops: a 1012 to an open connection (uvicorn calls this)."""
        if self._state == _OPEN:
            self.close_now(SERVICE_RESTART, SHUTDOWN_REASON)
        elif self._state == _HANDSHAKE:
            self._end_transport()

    # What the endpoint and the reader call.

    def refuse(self, status: int, text: str) -> None:
        """Answer the upgrade request with an HTTP error and close."""
        if self._state != _HANDSHAKE:
            return
        self._state = _CLOSED
        self.transport.write(refusal(status, text))
        self._end_transport()

    def accept(self, *, ping_interval: float, ping_timeout: float) -> bytes:
        """Accept the upgrade; return the 101 response for the caller to write first.

        The response is not written here so that it can share one `write()`
        with the first frame: a syscall and a TCP segment fewer per connect.
        The caller writes it before anything else, in the same call (an
        `Outbound`'s head, or `close_now`'s prefix).
        """
        assert self._state == _HANDSHAKE
        assert self._accept_value is not None
        accept, self._accept_value = self._accept_value, None
        self._state = _OPEN
        self._ping_interval, self._ping_timeout = ping_interval, ping_timeout
        _pings(self._loop).watch(self, time.monotonic() + ping_interval)
        return switching_protocols(accept, self._server_state.default_headers)

    def listen(self, reader: Reader) -> None:
        """Hand client messages (and the end of the conversation) to `reader` from now on."""
        if self._state != _OPEN:
            reader.closed()
            return
        self._reader = reader
        if self._inbox:
            reader.messages_arrived()

    def take(self) -> str | bytes | None:
        """The oldest client message not taken yet, or None; never waits."""
        inbox = self._inbox
        if not inbox:
            return None
        message = inbox.pop(0)
        if self._paused and not inbox and self._state != _CLOSED:
            self._paused = False
            self.transport.resume_reading()
        return message

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run the reader's `work` as a task the server waits for (then cancels) at shutdown."""
        task = self._loop.create_task(work)
        tasks = self._server_state.tasks
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def close_now(self, code: int, reason: str, prefix: bytes = b"") -> None:
        """Send a close frame at once (after `prefix`), and end the conversation.

        The frame queues behind whatever the transport holds; a peer that has
        not answered it after `CLOSE_TIMEOUT_SECONDS` is dropped, so a client
        that never reads cannot keep its connection, or what waits for it.
        """
        if self._state != _OPEN:
            return
        ws = self._protocol()
        ws.send_close(code, reason)
        self.transport.write(prefix + b"".join(ws.data_to_send()))
        self._closing()

    # Frames.

    def _frames_received(self, data: bytes) -> None:
        if self._partial:
            data, self._partial = self._partial + data, b""
        end, too_large = whole_frames_end(data, MAX_FRAME_BYTES)
        if end < len(data) and not too_large:
            data, self._partial = data[:end], data[end:]
            if not data:
                return
        ws = self._protocol()
        ws.receive_data(data)
        for frame in ws.events_received():
            if not isinstance(frame, Frame):
                continue
            opcode, data = frame.opcode, bytes(frame.data)
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                if frame.fin:
                    if not self._message(ws, opcode is Opcode.TEXT, data):
                        break
                else:
                    self._fragments = (opcode is Opcode.TEXT, [data])
            elif opcode is Opcode.CONT and self._fragments is not None:
                text, parts = self._fragments
                parts.append(data)
                if frame.fin:
                    self._fragments = None
                    if not self._message(ws, text, b"".join(parts)):
                        break
            elif opcode is Opcode.PONG:
                self._pong(data)
        self._send_what_websockets_wrote(ws)
        if ws.state is not State.OPEN:
            self._closing()
        elif self._fragments is None:
            self._ws = None

    def _message(self, ws: ServerProtocol, text: bool, data: bytes) -> bool:
        """Hand a whole message to the reader; False when no message may follow it.

        Not `ws.state`: a client's close frame read in the same chunk has
        already moved it on, and the messages before that frame still count.
        """
        if self._state != _OPEN:
            return False
        message: str | bytes = data
        if text:
            try:
                message = data.decode()
            except UnicodeDecodeError:
                ws.fail(1007, "invalid UTF-8 in a text frame")
                return False
        self._inbox.append(message)
        if len(self._inbox) >= INBOX_HIGH_WATER and not self._paused:
            self._paused = True
            self.transport.pause_reading()
        if self._reader is not None:
            self._reader.messages_arrived()
        return True

    def _send_what_websockets_wrote(self, ws: ServerProtocol) -> None:
        """Pongs, close frames and, once the closing handshake is done, the end of the socket."""
        for data in ws.data_to_send():
            if data:
                self.transport.write(data)
            else:  # websockets' signal that the server closes the TCP connection now
                self._end_transport()

    def _protocol(self) -> ServerProtocol:
        """websockets' protocol for this open connection, made again if it was dropped."""
        ws = self._ws
        if ws is None:
            ws = self._ws = ServerProtocol(
                state=State.OPEN, max_size=MAX_FRAME_BYTES, logger=_PROTOCOL_LOGGER
            )
        return ws

    def _closing(self) -> None:
        """A close frame went out (ours, or the answer to the client's, or a protocol error)."""
        if self._state != _OPEN:
            return
        self._state = _CLOSING
        self._stop_keepalive()
        if self._paused:  # the client's close frame must still be read
            self._paused = False
            self.transport.resume_reading()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT_SECONDS, self.transport.abort)
        self._report_closed()

    def _report_closed(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.closed()

    def _end_transport(self) -> None:
        # `close` waits for the write buffer to drain; the close timer bounds that wait.
        self.transport.close()

    # The handshake.

    def _handshake(self, data: bytes) -> None:
        upgrade = read_upgrade(data)
        if upgrade is None:
            upgrade = self._judged(data)
            if upgrade is None:
                return
        self._accept_value = upgrade.accept
        endpoint: Endpoint | None = self._app_state.get(ENDPOINT_STATE_KEY)
        if endpoint is None:
            self.refuse(503, "The server is not ready")
            return
        endpoint.open(self, upgrade)
        if self._state == _HANDSHAKE:  # the endpoint neither accepted nor refused
            logger.error("the endpoint left an upgrade unanswered")
            self.refuse(500, "Internal error")

    def _judged(self, data: bytes) -> Upgrade | None:
        """websockets' reading of a request `read_upgrade` could not vouch for.

        None when websockets refused it: its response is written, and the
        connection closes.
        """
        ws = ServerProtocol(max_size=MAX_FRAME_BYTES, logger=_PROTOCOL_LOGGER)
        ws.receive_data(data)
        events = ws.events_received()
        request = events[0] if events and isinstance(events[0], Request) else None
        if request is not None:
            response = ws.accept(request)
            if response.status_code == 101:
                headers = [
                    (name.lower().encode("latin-1"), value.encode("latin-1"))
                    for name, value in request.headers.raw_items()
                ]
                return Upgrade(request.path, headers, response.headers["Sec-WebSocket-Accept"])
            ws.send_response(response)
        # A malformed request has its 400 queued by websockets already.
        self._state = _CLOSED
        for chunk in ws.data_to_send():
            if chunk:
                self.transport.write(chunk)
        self._end_transport()
        return None

    # Keepalive.

    def _keepalive_due(self) -> None:
        if self._state != _OPEN:
            return
        if self._ping is not None:  # the peer stopped answering
            logger.info("keepalive ping timed out")
            self.transport.abort()
            return
        self._ping = os.urandom(4)
        self.transport.write(ping_frame(self._ping))
        _pings(self._loop).watch(self, time.monotonic() + self._ping_timeout)

    def _pong(self, payload: bytes) -> None:
        if self._ping is not None and payload == self._ping:
            self._ping = None
            _pings(self._loop).watch(self, time.monotonic() + self._ping_interval)

    def _stop_keepalive(self) -> None:
        _pings(self._loop).forget(self)
        self._ping = None


# One ping timer per event loop: a replica has one loop, a test process several.
_PINGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines[WebSocketConnection]] = (
    weakref.WeakKeyDictionary()
)


def _pings(loop: asyncio.AbstractEventLoop) -> Deadlines[WebSocketConnection]:
    pings = _PINGS.get(loop)
    if pings is None:
        pings = _PINGS[loop] = Deadlines(
            WebSocketConnection._keepalive_due,
            now=time.monotonic,
            resolution=PING_RESOLUTION_SECONDS,
        )
    return pings
