"""A small WebSocket test client for the gateway, on the `websockets` package."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

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
