"""Bookings, cancellations and Idempotency-Key, against real PostgreSQL and Redis (in-process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest

from shared.messages import parse_iso
from tests.support.api_client import (
    ChannelListener,
    bearer,
    create_event,
)
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def event(client: httpx.AsyncClient, token: Callable[..., str]) -> dict[str, object]:
    return await create_event(client, token(1, admin=True), 10)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    request = f"{response.request.method} {response.request.url} {response.request.content!r}"
    assert response.status_code == status, f"{request}: {response.text}"
    assert response.json()["error"]["code"] == code


async def book(
    client: httpx.AsyncClient,
    user_token: str,
    event_id: object,
    seats: int = 1,
    key: str | None = None,
) -> httpx.Response:
    headers = bearer(user_token)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post(
        "/api/bookings", json={"eventId": event_id, "seats": seats}, headers=headers
    )


async def test_booking_takes_seats_and_bumps_seq(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """POST /api/bookings returns 201 with the booking; the event loses the seats, seq is 1."""
    response = await book(client, token(42), event["id"], 3)
    assert response.status_code == 201, response.text
    booking = response.json()
    assert set(booking) == {
        "bookingId",
        "eventId",
        "userId",
        "seats",
        "status",
        "availableSeats",
        "createdAt",
    }
    assert booking["bookingId"].startswith("BK-")
    assert (booking["eventId"], booking["userId"], booking["seats"]) == (event["id"], 42, 3)
    assert (booking["status"], booking["availableSeats"]) == ("confirmed", 7)
    assert parse_iso(booking["createdAt"]).tzinfo is not None
    after = (await client.get(f"/api/events/{event['id']}")).json()
    assert (after["availableSeats"], after["seq"]) == (7, 1)


async def test_seats_default_to_one(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """A booking without `seats` books one seat."""
    response = await client.post(
        "/api/bookings", json={"eventId": event["id"]}, headers=bearer(token(2))
    )
    assert response.status_code == 201
    assert (response.json()["seats"], response.json()["availableSeats"]) == (1, 9)


async def test_booking_is_published_with_its_seq(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int], redis_url: str
) -> None:
    """A committed booking and its cancellation reach the event's channel as contract messages."""
    listener = await ChannelListener(redis_url, event["id"]).start()
    try:
        booking = (await book(client, token(5), event["id"], 2)).json()
        await client.delete(f"/api/bookings/{booking['bookingId']}", headers=bearer(token(5)))
        await async_wait_until(lambda: _count(listener, 2), timeout=10, what="two messages")
    finally:
        await listener.close()
    created, cancelled = listener.messages
    assert created == {
        "type": "booking_created",
        "eventId": event["id"],
        "bookingId": booking["bookingId"],
        "userId": 5,
        "seats": 2,
        "availableSeats": 8,
        "seq": 1,
        "timestamp": booking["createdAt"],
    }
    assert cancelled["type"] == "booking_cancelled"
    assert (cancelled["seq"], cancelled["availableSeats"], cancelled["seats"]) == (2, 10, 2)


async def _count(listener: ChannelListener, n: int) -> bool:
    return len(listener.messages) >= n


async def test_sold_out_is_409_and_changes_nothing(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """Asking for more seats than are left is 409 sold_out; seats and seq stay as they were."""
    event = await create_event(client, token(1, admin=True), 2)
    assert (await book(client, token(3), event["id"], 2)).status_code == 201
    assert_error(await book(client, token(4), event["id"], 1), 409, "sold_out")
    after = (await client.get(f"/api/events/{event['id']}")).json()
    assert (after["availableSeats"], after["seq"]) == (0, 1)


UNKNOWN_EVENT_IDS = [999999, 2**63 - 1]


async def test_booking_unknown_event_is_404(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """Booking an event that does not exist is 404 not_found."""
    for event_id in UNKNOWN_EVENT_IDS:
        assert_error(await book(client, token(3), event_id), 404, "not_found")


INVALID_BOOKING_BODIES = [
    {"eventId": 1, "seats": 0},
    {"eventId": 1, "seats": 11},
    {"eventId": 1, "seats": True},
    {"eventId": True},
    {"eventId": "1"},
    {"eventId": 0},
    {"eventId": 2**63},
    {"eventId": 10**30},
    {"seats": 1},
    {"eventId": 1, "userId": 7},
    {"eventId": 1.0},
    [],
]


async def test_invalid_booking_bodies_are_422(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """Out-of-range seats (1-10), bools, strings, ids beyond bigint, unknown fields: 422."""
    for body in INVALID_BOOKING_BODIES:
        response = await client.post("/api/bookings", json=body, headers=bearer(token(3)))
        assert_error(response, 422, "invalid_request")
    assert (await client.get(f"/api/events/{event['id']}")).json()["seq"] == 0


async def test_booking_needs_a_valid_token(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """No token or an expired one: 401 on every user endpoint."""
    assert_error(
        await client.post("/api/bookings", json={"eventId": event["id"]}), 401, "unauthorized"
    )
    expired = token(3, ttl_seconds=-10)
    assert_error(await book(client, expired, event["id"]), 401, "unauthorized")
    assert_error(await client.get("/api/bookings"), 401, "unauthorized")
    assert_error(await client.get("/api/bookings/BK-00"), 401, "unauthorized")
    assert_error(await client.delete("/api/bookings/BK-00"), 401, "unauthorized")


async def test_users_see_only_their_bookings(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """GET /api/bookings lists the caller's own bookings; another's booking is 404, admin sees it."""
    mine = [(await book(client, token(7), event["id"], n)).json() for n in (1, 2)]
    other = (await book(client, token(8), event["id"])).json()
    listed = (await client.get("/api/bookings", headers=bearer(token(7)))).json()
    assert listed == mine
    assert (
        await client.get(f"/api/bookings/{mine[0]['bookingId']}", headers=bearer(token(7)))
    ).json() == mine[0]
    path = f"/api/bookings/{other['bookingId']}"
    assert_error(await client.get(path, headers=bearer(token(7))), 404, "not_found")
    admin_view = await client.get(path, headers=bearer(token(1, admin=True)))
    assert admin_view.json() == other


UNKNOWN_BOOKING_IDS = ["BK-deadbeef", "nope", "BK-", "BK-XYZ", "%00", "a" * 300]


async def test_unknown_booking_is_404(client: httpx.AsyncClient, token: Callable[..., str]) -> None:
    """Unknown or malformed booking ids are 404 for GET and DELETE."""
    for booking_id in UNKNOWN_BOOKING_IDS:
        path = f"/api/bookings/{booking_id}"
        assert_error(await client.get(path, headers=bearer(token(3))), 404, "not_found")
        assert_error(await client.delete(path, headers=bearer(token(3))), 404, "not_found")


async def test_cancel_gives_seats_back_once(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """DELETE returns the booking cancelled with the new count; a second DELETE is 409."""
    booking = (await book(client, token(9), event["id"], 4)).json()
    path = f"/api/bookings/{booking['bookingId']}"
    response = await client.delete(path, headers=bearer(token(9)))
    assert response.status_code == 200
    cancelled = response.json()
    assert {**booking, "status": "cancelled", "availableSeats": 10} == cancelled
    assert_error(await client.delete(path, headers=bearer(token(9))), 409, "already_cancelled")
    assert (await client.get(path, headers=bearer(token(9)))).json()["status"] == "cancelled"
    after = (await client.get(f"/api/events/{event['id']}")).json()
    assert (after["availableSeats"], after["seq"]) == (10, 2)


async def test_others_cannot_cancel_but_admin_can(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """Cancelling someone else's booking is 404 and changes nothing; an admin may cancel it."""
    booking = (await book(client, token(9), event["id"], 2)).json()
    path = f"/api/bookings/{booking['bookingId']}"
    assert_error(await client.delete(path, headers=bearer(token(10))), 404, "not_found")
    assert (await client.get(f"/api/events/{event['id']}")).json()["availableSeats"] == 8
    response = await client.delete(path, headers=bearer(token(1, admin=True)))
    assert response.json()["status"] == "cancelled"


async def test_concurrent_cancels_give_seats_back_once(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """Ten simultaneous DELETEs of one booking: one 200, nine 409, the seats return once."""
    booking = (await book(client, token(9), event["id"], 3)).json()
    path = f"/api/bookings/{booking['bookingId']}"
    responses = await asyncio.gather(
        *(client.delete(path, headers=bearer(token(9))) for _ in range(10))
    )
    assert sorted(r.status_code for r in responses) == [200] + [409] * 9
    after = (await client.get(f"/api/events/{event['id']}")).json()
    assert (after["availableSeats"], after["seq"]) == (10, 2)


async def test_idempotency_key_replays_first_response(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """The same Idempotency-Key from the same user returns the first response and books once."""
    first = await book(client, token(11), event["id"], 2, key="order-1")
    again = await book(client, token(11), event["id"], 2, key="order-1")
    assert first.status_code == again.status_code == 201
    assert again.content == first.content
    listed = (await client.get("/api/bookings", headers=bearer(token(11)))).json()
    assert len(listed) == 1
    assert (await client.get(f"/api/events/{event['id']}")).json()["availableSeats"] == 8


async def test_idempotency_keys_are_per_user(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """Two users using the same key get two bookings."""
    a = await book(client, token(12), event["id"], key="same")
    b = await book(client, token(13), event["id"], key="same")
    assert a.json()["bookingId"] != b.json()["bookingId"]
    assert (await client.get(f"/api/events/{event['id']}")).json()["availableSeats"] == 8


async def test_idempotency_key_reused_for_other_request_is_422(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """A key reused with a different body is refused (422) and books nothing."""
    await book(client, token(14), event["id"], 1, key="k")
    assert_error(await book(client, token(14), event["id"], 3, key="k"), 422, "invalid_request")
    assert (await client.get(f"/api/events/{event['id']}")).json()["availableSeats"] == 9


async def test_failed_booking_does_not_burn_the_key(
    client: httpx.AsyncClient, token: Callable[..., str]
) -> None:
    """A sold-out attempt stores nothing: after seats free up the same key books."""
    event = await create_event(client, token(1, admin=True), 1)
    first = (await book(client, token(20), event["id"])).json()
    key = "retry-me"
    assert_error(await book(client, token(21), event["id"], key=key), 409, "sold_out")
    await client.delete(f"/api/bookings/{first['bookingId']}", headers=bearer(token(20)))
    assert (await book(client, token(21), event["id"], key=key)).status_code == 201


async def test_concurrent_repeats_of_a_key_book_once(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """Twenty simultaneous requests with one key: all get the same 201 body, one booking."""
    responses = await asyncio.gather(
        *(book(client, token(15), event["id"], 1, key="burst") for _ in range(20))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.content for r in responses}) == 1
    assert (await client.get(f"/api/events/{event['id']}")).json()["availableSeats"] == 9


INVALID_KEYS = ["", "x" * 201, "tab\there", "é"]


async def test_invalid_idempotency_key_is_422(
    client: httpx.AsyncClient, token: Callable[..., str], event: dict[str, int]
) -> None:
    """Idempotency-Key must be 1-200 printable ASCII characters."""
    for key in INVALID_KEYS:
        response = await client.post(
            "/api/bookings",
            json={"eventId": event["id"]},
            headers=[
                (b"Authorization", f"Bearer {token(3)}".encode()),
                (b"Idempotency-Key", key.encode("latin-1")),
            ],
        )
        assert_error(response, 422, "invalid_request")
    assert (await client.get(f"/api/events/{event['id']}")).json()["seq"] == 0
