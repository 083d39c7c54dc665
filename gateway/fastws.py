"""WS_IMPL=fast: uvicorn's sans-I/O WebSocket protocol plus a way to write pre-built frames.

A server's frames are unmasked, so one text frame built per message is valid
on every connection. The protocol offers itself to the app as a `FrameSink`
in the ASGI scope's extensions; the writer then writes whole frames (several
coalesced into one `write()`) to its transport, instead of one `send()`
coroutine per delivery that frames the same text again for each watcher.
Closes are written at once too (`close_now`), and a well-formed upgrade
request is answered without a second parse (gateway/handshake.py). Once
the session is set up, the app may hand the reading over (`listen`): its
ASGI task ends, the connection stays open, and a task exists only while a
client message is being handled.
Everything else (refused handshakes, client frames, pings, the 1009 limit)
stays uvicorn's.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, Final, Protocol
from urllib.parse import unquote

from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.deadlines import Deadlines
from gateway.handshake import Upgrade, read_upgrade, switching_protocols
from gateway.mailbox import Flag, Mailbox

# The scope extension under which the protocol offers itself.
FRAME_SINK_EXTENSION: Final = "seatcast.frame_sink"
TEXT_OPCODE: Final = 0x81  # FIN + text
# Keepalive pings go out at most this late; the interval itself is PING_INTERVAL_SECONDS.
PING_RESOLUTION_SECONDS: Final = 0.1


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
    # The 101 response while it waits to share the first frame's write; None once written.
    head: bytes | None

    def close_now(self, code: int, reason: str) -> None: ...

    def listen(self, reader: Callable[[], None] | None) -> None: ...

    def take(self) -> dict[str, Any] | None: ...

    def spawn(self, reading: Coroutine[Any, Any, None]) -> None: ...


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


def whole_frames(data: bytes) -> bool:
    """Whether `data` is client frames that all end within it (RFC 6455 5.2's lengths)."""
    start, end = 0, len(data)
    while start < end:
        if end - start < 2:
            return False
        second = data[start + 1]
        size, start = second & 0x7F, start + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, start = int.from_bytes(data[start : start + width], "big"), start + width
        start += size + (4 if second & 0x80 else 0)
    return start == end


def frame_sink(connection: object) -> FrameSink | None:
    """The sink of a Starlette `WebSocket` served by `FastWebSocketProtocol`, else None."""
    scope: dict[str, Any] = getattr(connection, "scope", None) or {}
    extensions = scope.get("extensions") or {}
    sink: FrameSink | None = extensions.get(FRAME_SINK_EXTENSION)
    return sink


class FastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O protocol that also accepts whole frames from the app."""

    # uvicorn's protocol sets over 30 attributes, too many for CPython to share one
    # key table among instances: each connection carried a 1.6 KiB dict of its own.
    # The per-connection ones live in slots instead, and the dict keeps the rest
    # few enough to share its keys (issue 4's memory profile).
    __slots__ = (
        "_conn",
        "_torn",
        "accept_header",
        "client",
        "close_sent",
        "close_timer",
        "curr_msg_data_type",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "head",
        "initial_response",
        "last_ping_rtt",
        "mailbox",
        "pending_ping_payload",
        "ping_sent_at",
        "ping_timer",
        "pong_timer",
        "read_paused",
        "scheme",
        "server",
        "transport",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # True unless every client byte so far came in whole frames after a handshake
        # read here: otherwise `conn` may hold parser state, and stays (`_release_conn`).
        self._torn = True
        # Same use, a fifth of an idle connection's memory less (gateway/mailbox.py).
        self.mailbox: Mailbox[dict[str, Any]] = Mailbox()
        self.queue = self.mailbox  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()
        # The `Sec-WebSocket-Accept` value until the app accepts; None once sent, or
        # when websockets handled the handshake.
        self.accept_header: str | None = None
        self.head: bytes | None = None

    # websockets' connection; None while released (`_release_conn`).
    _conn: ServerProtocol | None

    @property
    def conn(self) -> ServerProtocol:
        """websockets' sans-I/O connection, made again when needed (`_release_conn`)."""
        conn = self._conn
        if conn is None:
            conn = self._conn = ServerProtocol(
                state=State.OPEN, max_size=self.config.ws_max_size, logger=self.logger
            )
        return conn

    @conn.setter
    def conn(self, conn: ServerProtocol) -> None:
        self._conn = conn

    def _release_conn(self) -> None:
        """Drop websockets' connection while it holds nothing a new one would not.

        An open connection between whole frames is its settings and an idle
        parser, yet 1.3 KiB of every quiet client (a generator, a reader, the
        lists and a UUID; issue 4's memory profile). `conn` makes an equal one
        when a frame arrives or a ping, pong or close goes out. Anything else
        (closing, extensions, a message in fragments, bytes that may end inside
        a frame) keeps it.
        """
        conn = self._conn
        if (
            conn is not None
            and not self._torn
            and conn.state is State.OPEN
            and conn.current_size is None
            and not (conn.events or conn.writes or conn.extensions or self.frames)
        ):
            self._conn = None

    def data_received(self, data: bytes) -> None:
        if self.head is not None:  # a client that did not wait for the 101
            self.flush_head()
        if self.handshake_initiated or self.config.ws_per_message_deflate:
            if not self._torn and not whole_frames(data):
                self._torn = True
            super().data_received(data)
            self._release_conn()
            return
        # uvicorn hands the upgrade request on whole, as the first bytes: it is read
        # once, here or by websockets, never again from what a client sends next.
        self.handshake_initiated = True
        upgrade = read_upgrade(data)
        if upgrade is None:  # websockets judges it, and answers a refusal
            super().data_received(data)
            return
        self._open(upgrade)

    def _open(self, upgrade: Upgrade) -> None:
        """uvicorn's `handle_connect` for a request `read_upgrade` vouched for."""
        self.accept_header = upgrade.accept
        # Past the request: from here on websockets reads frames only, with a
        # connection made when the first one comes. uvicorn hands on nothing
        # after the request, so the next bytes start a frame.
        self._conn = None
        self._torn = False
        raw_path, _, query_string = upgrade.target.partition("?")
        extensions: dict[str, Any] = {"websocket.http.response": {}, FRAME_SINK_EXTENSION: self}
        self.scope = {
            "type": "websocket",
            "asgi": {"version": self.asgi_version, "spec_version": "2.4"},
            "http_version": "1.1",
            "scheme": self.scheme,
            "server": self.server,
            "client": self.client,
            "root_path": self.root_path,
            "path": self.root_path + unquote(raw_path),
            "raw_path": (self.root_path + raw_path).encode("ascii"),
            "query_string": query_string.encode("ascii"),
            "headers": upgrade.headers,
            "subprotocols": [],
            "state": self.app_state.copy(),
            "extensions": extensions,
        }
        self.queue.put_nowait({"type": "websocket.connect"})
        task = self.loop.create_task(self.run_asgi())
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

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
        # (A connection whose reading was handed over has no scope left.)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"].pop(FRAME_SINK_EXTENSION, None)

    def listen(self, reader: Callable[[], None] | None) -> None:
        """Hand the reading over from the ASGI task, which may then end.

        `reader` is called as client messages (and the disconnect) arrive, and
        at once if some are waiting; it `take`s them, in a task of its own
        (`spawn`) when it must await. An idle client then holds no task, no
        coroutine frames, no scope and no Starlette `WebSocket`: 4 KiB of each
        connection (issue 4's memory profile). None stops calling it.
        """
        self.mailbox.listen(reader)

    def take(self) -> dict[str, Any] | None:
        """The next ASGI receive event, or None; reading resumes once none wait (as `receive`)."""
        message = self.mailbox.take()
        if self.read_paused and self.mailbox.empty():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def spawn(self, reading: Coroutine[Any, Any, None]) -> None:
        """Run `reading` as the ASGI task ran: the server waits for it at shutdown."""
        task = self.loop.create_task(reading)
        task.add_done_callback(self.on_task_complete)
        self.tasks.add(task)

    async def run_asgi(self) -> None:
        """uvicorn's, except that a connection whose reading was handed over stays open."""
        try:
            result = await self.app(self.scope, self.receive, self.send)
        except ClientDisconnected:
            pass
        except BaseException:
            self.logger.exception("Exception in ASGI application\n")
            self.send_500_response()
        else:
            if not self.handshake_complete:
                self.logger.error("ASGI callable returned without completing handshake.")
                self.send_500_response()
            elif result is not None:
                self.logger.error("ASGI callable should return None, but returned '%s'.", result)
            elif self.mailbox.listened:
                # Nothing reads the scope again: the app is done with it, and uvicorn's
                # `send` (which logs with it) is not called without the app.
                del self.scope
                return
        if self.close_timer is None:
            self.transport.close()

    def schedule_ping(self) -> None:
        """uvicorn's next keepalive ping, on the loop's one ping timer instead of its own."""
        assert self.ping_interval is not None
        delay = max(0.0, self.ping_interval - self.last_ping_rtt)
        _pings(self.loop).watch(self, time.monotonic() + delay)

    def send_keepalive_ping(self) -> None:
        super().send_keepalive_ping()
        self._release_conn()  # the pong is matched by uvicorn, not by websockets

    def stop_keepalive(self) -> None:
        _pings(self.loop).forget(self)
        super().stop_keepalive()

    def flush_head(self) -> None:
        """Write the held 101 response, if no frame has carried it yet."""
        head, self.head = self.head, None
        if head is not None and not self.transport.is_closing():
            self.transport.write(head)

    def shutdown(self) -> None:
        self.flush_head()
        super().shutdown()

    def close_now(self, code: int, reason: str) -> None:
        """Send a close frame at once, without awaiting, and end the app's `receive()`.

        uvicorn's `websocket.close` path, minus its wait for the transport to
        drain: a connection needs no task of its own to close. The close frame
        queues behind whatever the transport holds; a peer that has not
        answered it after `close_timeout` (10 s) is dropped.
        """
        self.flush_head()
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
        accepting = message["type"] == "websocket.accept" and self.initial_response is None
        if accepting and self.accept_header is not None:
            await self._accept(message)
            return
        self.flush_head()
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # Sent; only a rejection before accepting would still need it.
            self.response.headers.clear()

    async def _accept(self, message: Any) -> None:
        """uvicorn's `websocket.accept` for a handshake `_open` read, its response held.

        The app's first frame (`connection_established`) follows in the same
        loop turn: the writer sends both in one `write()`, a syscall and a TCP
        segment fewer per connect. Should the app write nothing, the response
        goes out alone at the end of the turn; every other write flushes it
        first.
        """
        await self.writable.wait()
        if self.disconnected:
            raise ClientDisconnected()
        if self.logger.isEnabledFor(logging.INFO):
            path = get_path_with_query_string(self.scope)
            self.logger.info('%s - "WebSocket %s" [accepted]', get_client_addr(self.scope), path)
        extra = self.default_headers + list(message.get("headers", []))
        headers = [(name.lower(), value) for name, value in extra]
        if message.get("subprotocol"):
            headers.append((b"Sec-WebSocket-Protocol", message["subprotocol"].encode()))
        accept, self.accept_header = self.accept_header, None
        assert accept is not None
        if not self.transport.is_closing():
            self.handshake_complete = True
            self.head = switching_protocols(accept, headers)
            self.loop.call_soon(self.flush_head)
            self.start_keepalive()


# One ping timer per event loop: a replica has one loop, a test process several. The
# clock is the loop's (monotonic), read without holding the loop, so the entry goes
# with its loop.
_PINGS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Deadlines[FastWebSocketProtocol]] = (
    weakref.WeakKeyDictionary()
)


def _pings(loop: asyncio.AbstractEventLoop) -> Deadlines[FastWebSocketProtocol]:
    pings = _PINGS.get(loop)
    if pings is None:
        pings = _PINGS[loop] = Deadlines(
            _send_ping, now=time.monotonic, resolution=PING_RESOLUTION_SECONDS
        )
    return pings


def _send_ping(protocol: FastWebSocketProtocol) -> None:
    protocol.send_keepalive_ping()
