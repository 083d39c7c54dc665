"""Small WebSocket test clients for the gateway.

`WsClient` is a well-behaved client on the `websockets` package. `RawWsClient`
speaks the protocol over a bare socket: it writes whatever bytes a test
gives it (split frames, invalid UTF-8, frames past the limit), reads the
server's frames as they come, and answers nothing by itself (no pong, no
close), so keepalive and closing timeouts can be seen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode

# RFC 6455 section 1.3's example key, and the Sec-WebSocket-Accept that answers it.
KEY: Final = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT: Final = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="

Message = dict[str, Any]


class WsClient:
    """One connection: send JSON, receive JSON with a deadline, collect until a condition."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection

    @classmethod
    async def open(
        cls,
        base_url: str,
        path: str = "/ws",
        token: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        timeout: float = 10.0,
        **options: Any,
    ) -> WsClient:
        """Connect to `base_url + path`, with `?token=` when `token` is given."""
        url = base_url + path + (f"?token={token}" if token is not None else "")
        options.setdefault("ping_interval", None)
        options.setdefault("max_size", None)
        connection = await connect(
            url,
            additional_headers=dict(headers or {}),
            origin=origin,  # type: ignore[arg-type]
            open_timeout=timeout,
            compression=None,
            **options,
        )
        return cls(connection)

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.connection.close()

    async def send_json(self, message: Any) -> None:
        await self.connection.send(orjson.dumps(message).decode())

    async def send_text(self, text: str) -> None:
        await self.connection.send(text)

    async def recv_json(self, timeout: float = 10.0) -> Message:
        """The next message; TimeoutError when none arrives in time."""
        async with asyncio.timeout(timeout):
            frame = await self.connection.recv()
        message = orjson.loads(frame)
        assert isinstance(message, dict), frame
        return message

    async def recv_text(self, timeout: float = 10.0) -> str:
        """The next frame's text, exactly as the server sent it."""
        async with asyncio.timeout(timeout):
            frame = await self.connection.recv()
        assert isinstance(frame, str), frame
        return frame

    async def recv_type(self, kind: str, timeout: float = 10.0) -> Message:
        """The next message, which must be of type `kind`."""
        message = await self.recv_json(timeout)
        assert message["type"] == kind, message
        return message

    async def collect(
        self, until: Callable[[list[Message]], bool], timeout: float = 10.0
    ) -> list[Message]:
        """Receive until `until(messages so far)` holds; TimeoutError otherwise."""
        messages: list[Message] = []
        async with asyncio.timeout(timeout):
            while not until(messages):
                messages.append(orjson.loads(await self.connection.recv()))
        return messages

    async def collect_seqs(
        self, event_id: int, last_seq: int, timeout: float = 10.0
    ) -> list[Message]:
        """The event's seat changes until `seq == last_seq` has arrived."""
        messages = await self.collect(
            lambda got: any(m.get("eventId") == event_id and m.get("seq") == last_seq for m in got),
            timeout,
        )
        return [
            m for m in messages if m["type"].startswith("booking_") and m["eventId"] == event_id
        ]

    async def closed(self, timeout: float = 10.0) -> tuple[int | None, str]:
        """Read until the server closes; (close code, reason)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self.connection.recv()
        except ConnectionClosed as closed:
            frame = closed.rcvd
            return (frame.code, frame.reason) if frame is not None else (None, "")


def upgrade_request(
    target: str = "/ws",
    headers: Sequence[tuple[str, str]] | None = None,
    *,
    host: str = "127.0.0.1",
    key: str | None = KEY,
) -> bytes:
    """An upgrade request as a browser sends it; `headers` are added after the usual ones.

    `key=None` leaves the Sec-WebSocket-Key header out.
    """
    lines = [
        f"GET {target} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        *([] if key is None else [f"Sec-WebSocket-Key: {key}"]),
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers or ()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_frame(opcode: Opcode, payload: bytes, *, fin: bool = True) -> bytes:
    """One masked frame, as a client must send it."""
    return Frame(opcode, payload, fin).serialize(mask=True, extensions=[])


async def http_exchange(port: int, request: bytes, timeout: float = 10.0) -> tuple[bytes, bytes]:
    """Send `request`, read until the server closes: the response's head and body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        async with asyncio.timeout(timeout):
            head = await reader.readuntil(b"\r\n\r\n")
            body = await reader.read()
        return head, body
    finally:
        writer.close()


class RawWsClient:
    """A WebSocket connection over a bare socket, driven byte by byte by the test."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        # The handshake's response head, status line to blank line.
        self.head = b""

    @classmethod
    async def open(
        cls,
        port: int,
        target: str = "/ws",
        headers: Sequence[tuple[str, str]] | None = None,
        *,
        request: bytes | None = None,
        timeout: float = 10.0,
    ) -> RawWsClient:
        """Connect and complete the handshake (`request`, else a browser's); expects a 101."""
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        try:
            writer.write(request if request is not None else upgrade_request(target, headers))
            async with asyncio.timeout(timeout):
                client.head = await reader.readuntil(b"\r\n\r\n")
        except BaseException:
            writer.close()
            raise
        if not client.head.startswith(b"HTTP/1.1 101 "):
            writer.close()
            raise AssertionError(f"the upgrade was refused: {client.head!r}")
        return client

    async def __aenter__(self) -> RawWsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.abort()

    def abort(self) -> None:
        """Drop the socket, with no close frame."""
        self.writer.close()

    async def write(self, data: bytes) -> None:
        """Write `data` as one write of its own."""
        self.writer.write(data)
        await self.writer.drain()

    async def send_frame(self, opcode: Opcode, payload: bytes, *, fin: bool = True) -> None:
        await self.write(client_frame(opcode, payload, fin=fin))

    async def send_json(self, message: Any) -> None:
        await self.send_frame(Opcode.TEXT, orjson.dumps(message))

    async def send_close(self, code: int = 1000, reason: str = "") -> None:
        await self.send_frame(Opcode.CLOSE, Close(code, reason).serialize())

    async def recv_frame(self, timeout: float = 10.0) -> Frame | None:
        """The server's next frame; None when the connection ended (closed or reset) instead."""
        try:
            async with asyncio.timeout(timeout):
                return await self._read_frame()
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    async def recv_json(self, timeout: float = 10.0) -> Message:
        """The next frame, which must be a text frame carrying a JSON object."""
        frame = await self.recv_frame(timeout)
        assert frame is not None, "the connection ended"
        assert frame.opcode is Opcode.TEXT, frame
        assert frame.fin, frame
        message = orjson.loads(frame.data)
        assert isinstance(message, dict), frame
        return message

    async def recv_close(self, timeout: float = 10.0) -> Close:
        """The next frame, which must be a close frame: its code and reason."""
        frame = await self.recv_frame(timeout)
        assert frame is not None, "the connection ended without a close frame"
        assert frame.opcode is Opcode.CLOSE, frame
        return Close.parse(frame.data)

    async def ended(self, timeout: float = 10.0) -> list[Frame]:
        """Read until the connection ends (TimeoutError if it does not); the frames read."""
        frames = []
        async with asyncio.timeout(timeout):
            while (frame := await self.recv_frame(timeout)) is not None:
                frames.append(frame)
        return frames

    async def _read_frame(self) -> Frame:
        read = self.reader.readexactly
        first, second = await read(2)
        size = second & 0x7F
        if size >= 126:
            size = int.from_bytes(await read(2 if size == 126 else 8), "big")
        mask = await read(4) if second & 0x80 else b""
        data = await read(size)
        if mask:
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        return Frame(Opcode(first & 0x0F), data, fin=bool(first & 0x80))
