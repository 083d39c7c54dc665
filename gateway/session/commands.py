"""The client side of contract section 5: parse frames into commands, build replies.

No I/O here. `parse` turns one client frame into a typed command or a
`ProtocolError` carrying the contract's error code; the `*_message` helpers
build the server's replies as dicts for `encode_outgoing`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

from shared.messages import utc_now_iso

# A PostgreSQL bigint: the largest event id a booking backend can hand out.
MAX_EVENT_ID: Final = 2**63 - 1
# How much of an unknown `type` an error message quotes back.
QUOTED_TYPE_CHARS: Final = 64

INVALID_MESSAGE: Final = "invalid_message"
UNKNOWN_TYPE: Final = "unknown_type"
INVALID_EVENT_ID: Final = "invalid_event_id"
TOO_MANY_SUBSCRIPTIONS: Final = "too_many_subscriptions"
FORBIDDEN: Final = "forbidden"
INVALID_TOKEN: Final = "invalid_token"
# Not in the contract's list: Redis could not confirm a subscription in time.
UNAVAILABLE: Final = "unavailable"

INVALID_MESSAGE_TEXT: Final = "Invalid message format"
INVALID_EVENT_ID_TEXT: Final = "eventId must be a positive integer"

ErrorCode = Literal[
    "invalid_message",
    "unknown_type",
    "invalid_event_id",
    "too_many_subscriptions",
    "forbidden",
    "invalid_token",
    "unavailable",
]


@dataclass(frozen=True, slots=True)
class ProtocolError:
    """A client message the server answers with an `error` and then ignores."""

    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class SubscribeEvent:
    event_id: int
    # True for `mode: "add"`: keep the other subscriptions.
    add: bool
    # None: no recovery, start from the event's current state.
    since: int | None


@dataclass(frozen=True, slots=True)
class UnsubscribeEvent:
    event_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class GetStats:
    pass


@dataclass(frozen=True, slots=True)
class RefreshToken:
    token: str


Command = SubscribeEvent | UnsubscribeEvent | Ping | GetStats | RefreshToken


def parse(frame: str | bytes) -> Command | ProtocolError:
    """One client frame to a command, or the error the contract prescribes for it."""
    if not isinstance(frame, str):
        return ProtocolError(INVALID_MESSAGE, INVALID_MESSAGE_TEXT)
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        return ProtocolError(INVALID_MESSAGE, INVALID_MESSAGE_TEXT)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return ProtocolError(INVALID_MESSAGE, INVALID_MESSAGE_TEXT)
    kind: str = message["type"]
    parser = _PARSERS.get(kind)
    if parser is None:
        return ProtocolError(UNKNOWN_TYPE, f"Unknown message type {kind[:QUOTED_TYPE_CHARS]!r}")
    return parser(message)


def parse_event_id(value: object) -> int | None:
    """An event id from JSON or a URL path segment; None unless a positive integer."""
    if isinstance(value, str):
        if not (value.isascii() and value.isdigit()) or len(value) > len(str(MAX_EVENT_ID)):
            return None
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= MAX_EVENT_ID else None


def _event_id_field(message: dict[str, Any]) -> int | ProtocolError:
    # Only JSON integers count: "42" and 42.0 are refused, as the contract says.
    value = message.get("eventId")
    event_id = parse_event_id(value) if isinstance(value, int) else None
    if event_id is None:
        return ProtocolError(INVALID_EVENT_ID, INVALID_EVENT_ID_TEXT)
    return event_id


def _subscribe(message: dict[str, Any]) -> Command | ProtocolError:
    event_id = _event_id_field(message)
    if isinstance(event_id, ProtocolError):
        return event_id
    mode = message.get("mode", "replace")
    if mode not in ("add", "replace"):
        return ProtocolError(INVALID_MESSAGE, 'mode must be "add" or "replace"')
    since = message.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int) or since < 0):
        return ProtocolError(INVALID_MESSAGE, "since must be a non-negative integer")
    return SubscribeEvent(event_id=event_id, add=mode == "add", since=since)


def _unsubscribe(message: dict[str, Any]) -> Command | ProtocolError:
    event_id = _event_id_field(message)
    if isinstance(event_id, ProtocolError):
        return event_id
    return UnsubscribeEvent(event_id)


def _refresh(message: dict[str, Any]) -> Command | ProtocolError:
    token = message.get("token")
    if not isinstance(token, str) or not token:
        return ProtocolError(INVALID_TOKEN, "token must be a non-empty string")
    return RefreshToken(token)


_PARSERS: Final = {
    "subscribe_event": _subscribe,
    "unsubscribe_event": _unsubscribe,
    "ping": lambda _message: Ping(),
    "get_stats": lambda _message: GetStats(),
    "refresh_token": _refresh,
}


def error_message(code: ErrorCode, text: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": text}


def connection_established(client_id: str, event_id: int | None) -> dict[str, Any]:
    return {
        "type": "connection_established",
        "clientId": client_id,
        "eventId": event_id,
        "timestamp": utc_now_iso(),
    }


def subscribed(
    event_id: int, seq: int | None, available_seats: int | None, recovered: bool | None
) -> dict[str, Any]:
    """`recovered` is None when the client asked for no recovery (no `since`)."""
    reply: dict[str, Any] = {
        "type": "subscribed",
        "eventId": event_id,
        "seq": seq,
        "availableSeats": available_seats,
        "timestamp": utc_now_iso(),
    }
    if recovered is not None:
        reply["recovered"] = recovered
    return reply


def unsubscribed(event_id: int) -> dict[str, Any]:
    return {"type": "unsubscribed", "eventId": event_id, "timestamp": utc_now_iso()}


def pong() -> dict[str, Any]:
    return {"type": "pong", "timestamp": utc_now_iso()}


def stats(data: dict[str, Any]) -> dict[str, Any]:
    return {"type": "stats", "data": data}


def token_refreshed(expires_at: str | None) -> dict[str, Any]:
    return {"type": "token_refreshed", "expiresAt": expires_at}
