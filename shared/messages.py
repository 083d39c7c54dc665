"""The messages of contract section 5, encoded once with orjson."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

ChangeType = Literal["booking_created", "booking_cancelled"]


def iso(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a `Z`: `2026-11-25T17:00:00.123Z`."""
    # isoformat truncates to milliseconds as the contract's examples do, in a tenth
    # of strftime's time: every connect and reply carries a timestamp.
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def utc_now_iso() -> str:
    return iso(datetime.now(UTC))


def parse_iso(text: str) -> datetime:
    """The inverse of `iso`; raises ValueError for anything else."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def encode(message: dict[str, Any]) -> bytes:
    return orjson.dumps(message)


def encode_text(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


@dataclass(frozen=True, slots=True)
class SeatChange:
    """One committed change of an event's seats, as watchers receive it."""

    type: ChangeType
    event_id: int
    booking_id: str
    user_id: int
    seats: int
    available_seats: int
    seq: int
    timestamp: str

    def payload(self) -> bytes:
        """The exact JSON text published to Redis and forwarded to clients."""
        return encode(
            {
                "type": self.type,
                "eventId": self.event_id,
                "bookingId": self.booking_id,
                "userId": self.user_id,
                "seats": self.seats,
                "availableSeats": self.available_seats,
                "seq": self.seq,
                "timestamp": self.timestamp,
            }
        )
