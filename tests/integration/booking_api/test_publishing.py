"""Publishing through the outbox: Redis down, Redis restarted empty, a crash before publishing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from tests.support.api_client import (
    ChannelListener,
    bearer,
    create_event,
    history,
    state,
)
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until, wait_until

pytestmark = pytest.mark.timeout(120)


async def outbox_seqs(database_url: str, event_id: int) -> list[int]:
    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT seq FROM outbox WHERE event_id = $1 ORDER BY seq", event_id
        )
    finally:
        await connection.close()
    return [r["seq"] for r in rows]


async def _outbox_empty(database_url: str, event_id: int) -> bool:
    return await outbox_seqs(database_url, event_id) == []


async def _has(listener: ChannelListener, n: int) -> bool:
    return len(listener.messages) >= n


async def test_bookings_succeed_while_redis_is_down_and_publish_once_it_is_back(
    client: httpx.AsyncClient,
    token: Callable[..., str],
    redis_server: RedisServer,
    database_url: str,
) -> None:
    """With Redis stopped bookings still succeed at once; when it is back every message reaches
    the channel and the history stream in seq order, once."""
    event = await create_event(client, token(1, admin=True), 50)
    first = await client.post(
        "/api/bookings", json={"eventId": event["id"]}, headers=bearer(token(2))
    )
    assert first.status_code == 201
    await async_wait_until(
        lambda: _published(redis_server, event["id"], 1), timeout=10, what="seq 1 in Redis"
    )
    await async_wait_until(
        lambda: _outbox_empty(database_url, event["id"]), timeout=10, what="an empty outbox"
    )
    redis_server.stop()

    started = time.monotonic()
    for n in range(5):
        response = await client.post(
            "/api/bookings",
            json={"eventId": event["id"], "seats": 2},
            headers=bearer(token(10 + n)),
        )
        assert response.status_code == 201
    assert time.monotonic() - started < 5, "Redis being down slowed bookings"
    assert await outbox_seqs(database_url, event["id"]) == [2, 3, 4, 5, 6]

    # Hold the relay off the outbox rows until the listener is subscribed to the new Redis.
    blocker = await asyncpg.connect(database_url)
    try:
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.fetch("SELECT seq FROM outbox WHERE event_id = $1 FOR UPDATE", event["id"])
        redis_server.start()
        listener = await ChannelListener(redis_server.url, event["id"]).start()
        await transaction.commit()
    finally:
        await blocker.close()
    try:
        await async_wait_until(lambda: _has(listener, 5), timeout=30, what="5 messages")
        # A later change arriving proves the relay published the earlier ones.
        await client.post("/api/bookings", json={"eventId": event["id"]}, headers=bearer(token(3)))
        await async_wait_until(lambda: _has(listener, 6), timeout=10, what="the 6th message")
    finally:
        await listener.close()
    assert listener.seqs() == [2, 3, 4, 5, 6, 7]
    assert [m["availableSeats"] for m in listener.messages] == [47, 45, 43, 41, 39, 38]
    entries = history(redis_server.client(), event["id"])
    assert [e[0] for e in entries] == [f"{n}-0".encode() for n in range(2, 8)]
    assert [e[1] for e in entries] == listener.messages
    await async_wait_until(
        lambda: _outbox_empty(database_url, event["id"]), timeout=10, what="an empty outbox"
    )


async def _published(redis_server: RedisServer, event_id: int, seq: int) -> bool:
    return state(redis_server.client(), event_id).get("seq") == seq


async def test_redis_restarted_empty_gets_every_state_back(
    client: httpx.AsyncClient, token: Callable[..., str], redis_server: RedisServer
) -> None:
    """After Redis restarts empty the API writes every event's latest state back within
    seconds, including an event created while Redis was down (seq 0, all seats free)."""
    admin = token(1, admin=True)
    event = await create_event(client, admin, 9)
    for user in (2, 3, 4):
        await client.post(
            "/api/bookings", json={"eventId": event["id"]}, headers=bearer(token(user))
        )
    await async_wait_until(
        lambda: _published(redis_server, event["id"], 3), timeout=10, what="seq 3 in Redis"
    )

    redis_server.stop()
    created_while_down = await create_event(client, admin, 4, "Created while Redis was down")
    redis_server.start()

    def restored() -> bool:
        client_ = redis_server.client()
        return state(client_, event["id"]) == {"seq": 3, "availableSeats": 6} and state(
            client_, created_while_down["id"]
        ) == {"seq": 0, "availableSeats": 4}

    await asyncio.to_thread(wait_until, restored, 15, "states written back")


async def test_new_event_state_is_in_redis(
    client: httpx.AsyncClient, token: Callable[..., str], redis_server: RedisServer
) -> None:
    """Creating an event gives Redis its state (seq 0, capacity) so watchers never see null."""
    event = await create_event(client, token(1, admin=True), 12)
    await async_wait_until(
        lambda: _state_is(redis_server, event["id"], {"seq": 0, "availableSeats": 12}),
        timeout=10,
        what="the new event's state",
    )


async def _state_is(redis_server: RedisServer, event_id: int, expected: dict[str, int]) -> bool:
    return state(redis_server.client(), event_id) == expected


def test_relay_publishes_after_a_crash_between_commit_and_publish(
    service: Callable[..., ServiceProcess],
    database_url: str,
    redis_server: RedisServer,
    token: Callable[..., str],
) -> None:
    """A process killed (SIGKILL) after committing bookings it could not publish: the next
    process's relay publishes them, in order, once."""
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_server.url}
    first = service("booking_api", env)
    event = httpx.post(
        f"{first.http_url}/api/events",
        json={"name": "Gig", "capacity": 5},
        headers=bearer(token(1, admin=True)),
    ).json()
    redis_server.stop()
    bookings = [
        httpx.post(
            f"{first.http_url}/api/bookings",
            json={"eventId": event["id"]},
            headers=bearer(token(20 + n)),
            timeout=10,
        )
        for n in range(3)
    ]
    assert [b.status_code for b in bookings] == [201, 201, 201]
    first.kill()
    assert asyncio.run(outbox_seqs(database_url, event["id"])) == [1, 2, 3]

    redis_server.start()

    async def listen_while_restarting() -> list[dict[str, object]]:
        listener = await ChannelListener(redis_server.url, event["id"]).start()
        try:
            await asyncio.to_thread(service, "booking_api", env)
            await async_wait_until(lambda: _has(listener, 3), timeout=30, what="3 messages")
        finally:
            await listener.close()
        return listener.messages

    messages = asyncio.run(listen_while_restarting())
    assert [m["seq"] for m in messages] == [1, 2, 3]
    assert [m["bookingId"] for m in messages] == [b.json()["bookingId"] for b in bookings]
    entries = history(redis_server.client(), event["id"])
    assert [e[0] for e in entries] == [b"1-0", b"2-0", b"3-0"]
    # The relay deletes the rows in the transaction that published them, which commits
    # just after the messages reach the channel.
    asyncio.run(
        async_wait_until(
            lambda: _outbox_empty(database_url, event["id"]), timeout=10, what="an empty outbox"
        )
    )
