"""What travels from Redis to sockets: one `Publication` per message, shared by all watchers.

A payload is parsed once per replica (for `eventId`, `seq` and `timestamp`)
and decoded to text once; every watcher's writer gets the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.fastws import text_frame
from shared.messages import parse_iso


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One text frame for a client, with its UTF-8 size for the outbound byte budget."""

    text: str
    size: int
    # Seconds since the epoch from the payload's `timestamp`; None for replies.
    published_at: float | None = None
    # The ASGI send message, built once and shared by every connection.
    asgi: dict[str, Any] = field(init=False, repr=False, compare=False)
    # The same as one WebSocket text frame, for connections that take frames (WS_IMPL=fast).
    frame: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "asgi", {"type": "websocket.send", "text": self.text})
        object.__setattr__(self, "frame", text_frame(self.text.encode()))


@dataclass(frozen=True, slots=True)
class Publication(Outgoing):
    """A seat change of one event, as published by a booking backend."""

    event_id: int = 0
    seq: int = 0


def outgoing(message: dict[str, Any]) -> Outgoing:
    """A server reply encoded once."""
    data = orjson.dumps(message)
    return Outgoing(text=data.decode(), size=len(data))


def parse_publication(data: bytes) -> Publication | None:
    """The publication in a Redis payload; None when it lacks a positive `eventId` and `seq`."""
    try:
        message = orjson.loads(data)
        text = data.decode()
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(message, dict):
        return None
    event_id, seq = message.get("eventId"), message.get("seq")
    if not (isinstance(event_id, int) and _positive_int(event_id)):
        return None
    if not (isinstance(seq, int) and _positive_int(seq)):
        return None
    return Publication(
        text=text,
        size=len(data),
        published_at=_epoch(message.get("timestamp")),
        event_id=event_id,
        seq=seq,
    )


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _epoch(timestamp: object) -> float | None:
    if not isinstance(timestamp, str):
        return None
    try:
        return parse_iso(timestamp).timestamp()
    except ValueError:
        return None
