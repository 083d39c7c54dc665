"""The SQL of events and bookings.

A seat change is one statement: the conditional `UPDATE events` that takes the
seats and the next `seq`, the booking row and the outbox row, joined in a
common table expression. No row lock outlives that statement's transaction,
and PostgreSQL re-checks `available_seats >= seats` on the row it locks, so
concurrent bookings can never oversell.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from booking_api.errors import ApiError, not_found
from shared.messages import iso

# A pool or one of its connections: both run queries (asyncpg ships no type hints).
Connection = Any


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    name: str
    capacity: int
    available_seats: int
    seq: int

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "capacity": self.capacity,
            "availableSeats": self.available_seats,
            "seq": self.seq,
        }


@dataclass(frozen=True, slots=True)
class Booking:
    booking_id: str
    event_id: int
    user_id: int
    seats: int
    status: str
    available_seats: int
    created_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "bookingId": self.booking_id,
            "eventId": self.event_id,
            "userId": self.user_id,
            "seats": self.seats,
            "status": self.status,
            "availableSeats": self.available_seats,
            "createdAt": iso(self.created_at),
        }


def new_booking_id() -> str:
    return "BK-" + secrets.token_hex(8)


_EVENT_COLUMNS = "id, name, capacity, available_seats, seq"
_BOOKING_COLUMNS = "public_id, event_id, user_id, seats, status, available_seats, created_at"


def _event(row: asyncpg.Record) -> Event:
    return Event(*row.values())


def _booking(row: asyncpg.Record) -> Booking:
    return Booking(*row.values())


async def create_event(db: Connection, name: str, capacity: int) -> Event:
    row = await db.fetchrow(
        f"INSERT INTO events (name, capacity, available_seats) VALUES ($1, $2, $2)"
        f" RETURNING {_EVENT_COLUMNS}",
        name,
        capacity,
    )
    return _event(row)


async def list_events(db: Connection) -> list[Event]:
    return [_event(r) for r in await db.fetch(f"SELECT {_EVENT_COLUMNS} FROM events ORDER BY id")]


async def get_event(db: Connection, event_id: int) -> Event:
    row = await db.fetchrow(f"SELECT {_EVENT_COLUMNS} FROM events WHERE id = $1", event_id)
    if row is None:
        raise not_found("event")
    return _event(row)


_BOOK = """
WITH changed AS (
    UPDATE events SET available_seats = available_seats - $2, seq = seq + 1
    WHERE id = $1 AND available_seats >= $2
    RETURNING id, seq, available_seats
), booked AS (
    INSERT INTO bookings (public_id, event_id, user_id, seats, status, available_seats, created_at)
    SELECT $3, id, $4, $2, 'confirmed', available_seats, $5 FROM changed
), queued AS (
    INSERT INTO outbox
        (event_id, seq, type, booking_id, user_id, seats, available_seats, occurred_at)
    SELECT id, seq, 'booking_created', $3, $4, $2, available_seats, $5 FROM changed
)
SELECT available_seats FROM changed
"""


async def book(db: Connection, event_id: int, user_id: int, seats: int) -> Booking:
    """Take `seats` of the event for the user; 404 for no such event, 409 when too few are left."""
    booking_id = new_booking_id()
    now = datetime.now(UTC)
    available = await db.fetchval(_BOOK, event_id, seats, booking_id, user_id, now)
    if available is None:
        if await db.fetchval("SELECT 1 FROM events WHERE id = $1", event_id) is None:
            raise not_found("event")
        raise ApiError(409, "sold_out", f"fewer than {seats} seats are left")
    return Booking(booking_id, event_id, user_id, seats, "confirmed", available, now)


_CANCEL = f"""
WITH target AS (
    SELECT id, event_id, user_id, seats FROM bookings
    WHERE public_id = $1 AND status = 'confirmed' AND (user_id = $2 OR $3)
    FOR UPDATE
), changed AS (
    UPDATE events e SET available_seats = e.available_seats + t.seats, seq = e.seq + 1
    FROM target t WHERE e.id = t.event_id
    RETURNING e.id, e.seq, e.available_seats
), cancelled AS (
    UPDATE bookings b
    SET status = 'cancelled', cancelled_at = $4, available_seats = c.available_seats
    FROM target t, changed c WHERE b.id = t.id
    RETURNING {", ".join("b." + c for c in _BOOKING_COLUMNS.split(", "))}
), queued AS (
    INSERT INTO outbox
        (event_id, seq, type, booking_id, user_id, seats, available_seats, occurred_at)
    SELECT c.id, c.seq, 'booking_cancelled', $1, t.user_id, t.seats, c.available_seats, $4
    FROM target t, changed c
)
SELECT * FROM cancelled
"""


async def cancel(db: Connection, booking_id: str, user_id: int, is_admin: bool) -> Booking:
    """Give the booking's seats back; 404 unless the caller's (or admin); 409 if cancelled."""
    row = await db.fetchrow(_CANCEL, booking_id, user_id, is_admin, datetime.now(UTC))
    if row is not None:
        return _booking(row)
    await get_booking(db, booking_id, user_id, is_admin)
    raise ApiError(409, "already_cancelled", "the booking is already cancelled")


async def get_booking(db: Connection, booking_id: str, user_id: int, is_admin: bool) -> Booking:
    row = await db.fetchrow(
        f"SELECT {_BOOKING_COLUMNS} FROM bookings WHERE public_id = $1 AND (user_id = $2 OR $3)",
        booking_id,
        user_id,
        is_admin,
    )
    if row is None:
        raise not_found("booking")
    return _booking(row)


async def list_bookings(db: Connection, user_id: int) -> list[Booking]:
    rows = await db.fetch(
        f"SELECT {_BOOKING_COLUMNS} FROM bookings WHERE user_id = $1 ORDER BY id", user_id
    )
    return [_booking(r) for r in rows]
