"""Stand-ins for what a gateway writer writes to: a Starlette socket, or a frame sink."""

from __future__ import annotations

from typing import Any

import orjson

from gateway.flusher import Flusher
from gateway.frame_writer import FrameWriter
from gateway.hub import Hub, Subscription
from gateway.metrics import Stats
from gateway.publication import Publication


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
        self.head: bytes | None = None
        self.closes: list[tuple[int, str]] = []

    def close_now(self, code: int, reason: str) -> None:
        self.closes.append((code, reason))
        self.close_sent = True

    @property
    def writes(self) -> list[bytes]:
        return self.transport.writes


class NoBroker:
    """A broker that confirms every subscription at once."""

    async def subscribe(self, event_id: int) -> None:
        return None

    def unsubscribe(self, event_id: int) -> None:
        return None


def publication(seq: int, published_at: float | None = None, event_id: int = 1) -> Publication:
    data = orjson.dumps({"eventId": event_id, "seq": seq})
    return Publication(data, event_id=event_id, seq=seq, published_at=published_at)


async def live_watchers(
    hub: Hub, flusher: Flusher, stats: Stats, count: int, limit: int = 1 << 20
) -> list[RecordingSink]:
    """`count` connections (WS_IMPL=fast) watching event 1 live, from seq 0."""
    sinks = []
    for _ in range(count):
        sink = RecordingSink()
        writer = FrameWriter(sink, limit, stats, flusher)  # type: ignore[arg-type]
        subscription = Subscription(1, writer, last_seq=0)
        await hub.subscribe(subscription)
        subscription.go_live()
        sinks.append(sink)
    return sinks
