"""No overselling and gap-free `seq` under concurrent requests (in-process app, real databases)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from tests.support.api_client import (
    ChannelListener,
    bearer,
    create_event,
    history,
)
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(90)


async def test_hundred_concurrent_bookings_on_twenty_seats(
    client: httpx.AsyncClient, token: Callable[..., str], redis_server: RedisServer
) -> None:
    """100 users book one seat each at once on 20 seats: exactly 20 succeed, seq runs 1..20,
    and the 20 messages reach the channel and the history stream once each, in order."""
    event = await create_event(client, token(1, admin=True), 20)
    listener = await ChannelListener(redis_server.url, event["id"]).start()
    try:
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/bookings", json={"eventId": event["id"]}, headers=bearer(token(1000 + n))
                )
                for n in range(100)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [201] * 20 + [409] * 80
        assert {r.json()["error"]["code"] for r in responses if r.status_code == 409} == {
            "sold_out"
        }
        after = (await client.get(f"/api/events/{event['id']}")).json()
        assert (after["availableSeats"], after["seq"]) == (0, 20)
        counts = sorted(r.json()["availableSeats"] for r in responses if r.status_code == 201)
        assert counts == list(range(20))

        await async_wait_until(lambda: _has(listener, 20), timeout=20, what="20 messages")
    finally:
        await listener.close()
    assert listener.seqs() == list(range(1, 21))
    assert [m["availableSeats"] for m in listener.messages] == list(range(19, -1, -1))
    entries = history(redis_server.client(), event["id"])
    assert [e[0] for e in entries] == [f"{n}-0".encode() for n in range(1, 21)]
    assert [e[1] for e in entries] == listener.messages
    booked = {r.json()["bookingId"] for r in responses if r.status_code == 201}
    assert {m["bookingId"] for m in listener.messages} == booked


async def _has(listener: ChannelListener, n: int) -> bool:
    return len(listener.messages) >= n


async def test_mixed_bookings_and_cancellations_keep_the_invariant(
    client: httpx.AsyncClient, token: Callable[..., str], database_url: str
) -> None:
    """Concurrent bookings of 1-3 seats and cancellations never oversell: availableSeats stays
    in [0, capacity], equals capacity minus confirmed seats, and seq counts every change."""
    event = await create_event(client, token(1, admin=True), 15)
    rng = random.Random(7)

    async def user(n: int) -> int:
        headers = bearer(token(2000 + n))
        response = await client.post(
            "/api/bookings",
            headers=headers,
            json={"eventId": event["id"], "seats": rng.randint(1, 3)},
        )
        if response.status_code != 201:
            return 0
        if n % 3 == 0:
            path = f"/api/bookings/{response.json()['bookingId']}"
            assert (await client.delete(path, headers=headers)).status_code == 200
            return 2
        return 1

    changes = sum(await asyncio.gather(*(user(n) for n in range(60))))
    after = (await client.get(f"/api/events/{event['id']}")).json()
    connection = await asyncpg.connect(database_url)
    try:
        confirmed = await connection.fetchval(
            "SELECT coalesce(sum(seats), 0) FROM bookings WHERE event_id = $1"
            " AND status = 'confirmed'",
            event["id"],
        )
    finally:
        await connection.close()
    assert 0 <= after["availableSeats"] <= 15
    assert after["availableSeats"] == 15 - confirmed
    assert after["seq"] == changes
