"""Redis names and message encoding."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.channels import event_channel, event_id_of_channel, history_key, state_key
from shared.messages import SeatChange, iso, parse_iso


def test_names_follow_the_contract() -> None:
    """Channel and history names carry the `{eventId}` hash tag literally."""
    assert event_channel(42) == "booking:event:{42}"
    assert history_key(42) == "booking:event:{42}:history"
    assert state_key(42).startswith("booking:event:{42}")
    assert event_id_of_channel(b"booking:event:{42}") == 42


def test_foreign_channel_is_refused() -> None:
    """A channel that is not an event channel raises ValueError."""
    with pytest.raises(ValueError, match="not an event channel"):
        event_id_of_channel("other:{1}")


def test_iso_timestamps_are_utc_with_milliseconds() -> None:
    """Timestamps look like `2026-11-25T17:00:00.123Z` and parse back."""
    moment = datetime(2026, 11, 25, 17, 0, 0, 123456, tzinfo=UTC)
    assert iso(moment) == "2026-11-25T17:00:00.123Z"
    assert parse_iso(iso(moment)) == moment.replace(microsecond=123000)


@given(
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(-14 * 60, 14 * 60),
)
def test_iso_is_any_moment_in_utc_truncated_to_milliseconds(moment: datetime, minutes: int) -> None:
    """`iso` of any aware moment is its UTC time with milliseconds truncated and a `Z`."""
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    utc = aware.astimezone(UTC)
    expected = f"{utc:%Y-%m-%dT%H:%M:%S}.{utc.microsecond // 1000:03d}Z"
    assert iso(aware) == expected


def test_payload_has_every_contract_field() -> None:
    """The published payload is the contract's message, camelCase, userId an integer."""
    change = SeatChange(
        "booking_created", 1, "BK-7f3a9c", 10, 1, 49, 17, "2026-11-25T17:00:00.123Z"
    )
    assert orjson.loads(change.payload()) == {
        "type": "booking_created",
        "eventId": 1,
        "bookingId": "BK-7f3a9c",
        "userId": 10,
        "seats": 1,
        "availableSeats": 49,
        "seq": 17,
        "timestamp": "2026-11-25T17:00:00.123Z",
    }
