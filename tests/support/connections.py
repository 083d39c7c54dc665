"""A stand-in for a client's WebSocket connection, for sessions driven without sockets.

It is what `gateway.session.session.Session` needs of a connection (`transport`,
`close_now`, `take`, `spawn`); what the session writes is decoded back from
the server's text frames into JSON messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import orjson

from gateway.fanin.history import EventState
from gateway.fanout.publication import Publication
from tests.support.wait import scheduled_callbacks_run


def text_frames(data: bytes) -> list[bytes]:
    """The payloads of the unmasked text frames in `data` (what a server writes)."""
    payloads, start = [], 0
    while start < len(data):
        assert data[start] == 0x81, "not a final text frame"
        size, start = data[start + 1] & 0x7F, start + 2
        if size >= 126:
            width = 2 if size == 126 else 8
            size, start = int.from_bytes(data[start : start + width], "big"), start + width
        payloads.append(data[start : start + size])
        start += size
    return payloads


class FakeTransport:
    """Records what is written; never has a backlog."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closing = False

    def write(self, data: bytes) -> None:
        self.data += data

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closing


class FakeConnection:
    """Feeds client messages to a session and decodes what it writes."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.inbox: list[str | bytes] = []
        self.close_frame: tuple[int, str] | None = None
        self.reader: Any = None
        self.tasks: set[asyncio.Task[None]] = set()
        # Made in a running loop; messages may be pushed from outside it (Hypothesis rules).
        self._loop = asyncio.get_running_loop()

    # What the session calls.

    def take(self) -> str | bytes | None:
        return self.inbox.pop(0) if self.inbox else None

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def close_now(self, code: int, reason: str, prefix: bytes = b"") -> None:
        self.transport.write(prefix)
        if self.close_frame is None:
            self.close_frame = (code, reason)
            self.transport.closing = True
            if self.reader is not None:
                self.reader.closed()

    # What the test calls.

    @property
    def sent(self) -> list[dict[str, Any]]:
        return [orjson.loads(payload) for payload in text_frames(bytes(self.transport.data))]

    def push(self, message: dict[str, Any]) -> None:
        self.inbox.append(orjson.dumps(message).decode())
        if self.reader is not None:
            self.reader.messages_arrived()

    def disconnect(self) -> None:
        """The client went away: what the connection tells its reader."""
        self.transport.closing = True
        if self.reader is not None:
            self.reader.closed()


class EmptyHistory:
    """A history that knows no event, answering after a round trip's worth of other work."""

    async def state(self, event_id: int) -> EventState:
        await scheduled_callbacks_run()
        return EventState(seq=None, available_seats=None)

    async def read(
        self, event_id: int, first_seq: int, last_seq: int | None = None
    ) -> list[Publication]:
        await scheduled_callbacks_run()
        return []
