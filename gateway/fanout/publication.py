"""What travels from Redis to sockets: one `Publication` per message, shared by all watchers.

A payload is parsed once per replica (for `eventId`, `seq` and `timestamp`)
and framed once; every watcher's writer gets the same objects.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import orjson

from gateway.wire.frames import text_frame


class Outgoing:
    """One text frame for a client: its JSON bytes, framed once and shared by every watcher.

    A plain slotted class: built once per message on the fan-in path, where a
    frozen dataclass's `__setattr__` detours cost more than the JSON parse.
    """

    __slots__ = ("data", "frame", "size")

    # What writing it adds to the `deliveries` count: replies are not deliveries.
    deliveries: ClassVar[int] = 0

    def __init__(self, data: bytes) -> None:
        # Valid UTF-8 JSON text (orjson made or checked it).
        self.data = data
        # The outbound byte budget counts these bytes.
        self.size = len(data)
        # The same as one WebSocket text frame, written to every watcher as it is.
        self.frame = text_frame(data)

    @property
    def text(self) -> str:
        return self.data.decode()


class Publication(Outgoing):
    """A seat change of one event, as published by a booking backend."""

    __slots__ = ("event_id", "published_at", "seq")

    deliveries: ClassVar[int] = 1

    def __init__(
        self, data: bytes, event_id: int, seq: int, published_at: float | None = None
    ) -> None:
        # Outgoing.__init__, inlined: this runs once per message on the fan-in path.
        self.data = data
        self.size = len(data)
        self.frame = text_frame(data)
        self.event_id = event_id
        self.seq = seq
        # Seconds since the epoch from the payload's `timestamp`; None without one.
        self.published_at = published_at


def outgoing(message: dict[str, Any]) -> Outgoing:
    """A server reply encoded once."""
    return Outgoing(orjson.dumps(message))


def parse_publication(data: bytes) -> Publication | None:
    """The publication in a Redis payload; None when it lacks a positive `eventId` and `seq`."""
    try:
        # orjson refuses invalid UTF-8 too: the bytes are then valid text frames.
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict):
        return None
    event_id, seq = message.get("eventId"), message.get("seq")
    # `type(...) is int` also refuses booleans, which are ints to isinstance.
    if not (type(event_id) is int and event_id > 0 and type(seq) is int and seq > 0):
        return None
    return Publication(data, event_id, seq, _epoch(message.get("timestamp")))


def _epoch(timestamp: object) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        # Python 3.11 reads the `Z` suffix itself (shared.messages.iso writes it).
        return datetime.fromisoformat(timestamp).timestamp()
    except ValueError:
        return None
