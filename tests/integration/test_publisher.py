"""The shared publisher against a real Redis: once, in order, capped, expiring, never backwards."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio

from shared.channels import event_channel, history_key, state_key
from shared.messages import SeatChange
from shared.publisher import Publisher
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_server.url)
    yield client
    await client.aclose()


def change(seq: int, available: int = 10, event_id: int = 7) -> SeatChange:
    return SeatChange(
        "booking_created",
        event_id,
        f"BK-{seq:04x}",
        3,
        1,
        available,
        seq,
        "2026-11-25T17:00:00.123Z",
    )


async def stream(client: redis.asyncio.Redis, event_id: int = 7) -> list[tuple[Any, Any]]:
    """The event's history entries as (id, fields)."""
    return list(await client.xrange(history_key(event_id)) or [])


class Subscription:
    """Raw messages received on one channel, in order."""

    def __init__(self, client: redis.asyncio.Redis, channel: str, sharded: bool = False) -> None:
        self.pubsub = client.pubsub()
        self.channel = channel
        self.sharded = sharded
        self.received: list[bytes] = []

    async def __aenter__(self) -> Subscription:
        if self.sharded:
            await self.pubsub.ssubscribe(self.channel)
        else:
            await self.pubsub.subscribe(self.channel)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pubsub.aclose()  # type: ignore[no-untyped-call]

    async def collect(self, count: int) -> list[bytes]:
        async def enough() -> bool:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
            if message is not None:
                self.received.append(message["data"])
            return len(self.received) >= count

        await async_wait_until(enough, timeout=10, what=f"{count} messages")
        return self.received


async def test_publish_writes_history_state_and_channel_with_one_payload(
    client: redis.asyncio.Redis,
) -> None:
    """One publish: stream entry `<seq>-0`, state hash, channel message, all the same bytes."""
    publisher = Publisher(client, history_size=100, history_ttl_seconds=600)
    async with Subscription(client, event_channel(7)) as subscription:
        assert await publisher.publish(change(1, 9)) is True
        [message] = await subscription.collect(1)
    [(entry_id, fields)] = await stream(client)
    assert entry_id == b"1-0"
    assert fields == {b"payload": change(1, 9).payload()}
    assert message == change(1, 9).payload()
    assert await client.hgetall(state_key(7)) == {b"seq": b"1", b"availableSeats": b"9"}
    assert 0 < await client.ttl(history_key(7)) <= 600


async def test_a_seq_is_published_once(client: redis.asyncio.Redis) -> None:
    """Publishing a seq again, or an older one, publishes nothing and changes nothing."""
    publisher = Publisher(client)
    async with Subscription(client, event_channel(7)) as subscription:
        assert await publisher.publish(change(1, 9)) is True
        assert await publisher.publish(change(2, 8)) is True
        assert await publisher.publish(change(2, 8)) is False
        assert await publisher.publish(change(1, 9)) is False
        assert await publisher.publish(change(3, 7)) is True
        received = await subscription.collect(3)
    assert received == [change(n, 10 - n).payload() for n in (1, 2, 3)]
    assert [e[0] for e in await stream(client)] == [b"1-0", b"2-0", b"3-0"]
    assert await client.hget(state_key(7), "seq") == b"3"


async def test_messages_arrive_in_seq_order(client: redis.asyncio.Redis) -> None:
    """Fifty publishes in seq order arrive on the channel in that order."""
    publisher = Publisher(client)
    async with Subscription(client, event_channel(7)) as subscription:
        for seq in range(1, 51):
            await publisher.publish(change(seq, 100 - seq))
        received = await subscription.collect(50)
    assert received == [change(seq, 100 - seq).payload() for seq in range(1, 51)]


async def test_publish_many_keeps_order_and_drops_duplicates(client: redis.asyncio.Redis) -> None:
    """A batch goes out in its order in one pipeline; seqs Redis already has are skipped."""
    publisher = Publisher(client)
    await publisher.publish(change(2, 8))
    async with Subscription(client, event_channel(7)) as subscription:
        results = await publisher.publish_many([change(n, 10 - n) for n in range(1, 6)])
        received = await subscription.collect(3)
    assert results == [False, False, True, True, True]
    assert received == [change(n, 10 - n).payload() for n in (3, 4, 5)]
    assert [e[0] for e in await stream(client)] == [b"2-0", b"3-0", b"4-0", b"5-0"]
    await client.script_flush()
    assert await publisher.publish_many([change(6, 4)]) == [True]


async def test_history_is_capped_at_history_size(client: redis.asyncio.Redis) -> None:
    """HISTORY_SIZE caps the stream: only the newest entries stay."""
    publisher = Publisher(client, history_size=3)
    for seq in range(1, 11):
        await publisher.publish(change(seq))
    assert [e[0] for e in await stream(client)] == [b"8-0", b"9-0", b"10-0"]


async def test_restore_state_never_goes_backwards(client: redis.asyncio.Redis) -> None:
    """restore_state sets a missing state, refuses an older seq, and a restored seq makes the
    publish of that seq or older a duplicate."""
    publisher = Publisher(client)
    assert await publisher.restore_state(7, 5, 20) is True
    assert await publisher.restore_state(7, 3, 99) is False
    assert await client.hgetall(state_key(7)) == {b"seq": b"5", b"availableSeats": b"20"}
    assert await publisher.publish(change(5, 1)) is False
    assert await publisher.publish(change(6, 19)) is True
    assert await publisher.restore_state(7, 6, 0) is False
    assert await client.hgetall(state_key(7)) == {b"seq": b"6", b"availableSeats": b"19"}


async def test_events_are_independent(client: redis.asyncio.Redis) -> None:
    """Each event has its own seq: seq 1 of another event is not a duplicate."""
    publisher = Publisher(client)
    assert await publisher.publish(change(1, event_id=1)) is True
    assert await publisher.publish(change(1, event_id=2)) is True
    assert await client.xlen(history_key(2)) == 1


async def test_sharded_publisher_uses_spublish(client: redis.asyncio.Redis) -> None:
    """With sharded=True the message goes out with SPUBLISH, to sharded subscribers."""
    publisher = Publisher(client, sharded=True)
    async with Subscription(client, event_channel(7), sharded=True) as subscription:
        assert await publisher.publish(change(1)) is True
        assert await subscription.collect(1) == [change(1).payload()]
