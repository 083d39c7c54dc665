"""Stand-ins for what a gateway writer writes to: a Starlette socket, or a frame sink."""

from __future__ import annotations

from typing import Any


class RecordingSocket:
    """A Starlette-like socket that records what the writer sends."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closes: list[tuple[int, str | None]] = []

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closes.append((code, reason))


class RecordingTransport:
    """The transport of a frame sink: records writes, with a settable kernel backlog."""

    def __init__(self, buffered: int) -> None:
        self.writes: list[bytes] = []
        self.buffered = buffered
        self.closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class RecordingSink:
    """A frame sink standing in for `FastWebSocketProtocol`."""

    def __init__(self, buffered: int = 0) -> None:
        self.transport = RecordingTransport(buffered)
        self.close_sent = False
        self.closes: list[tuple[int, str]] = []

    def close_now(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.close_sent = True

    @property
    def writes(self) -> list[bytes]:
        return self.transport.writes
