"""The Redis broker against a real Redis: one subscription per watched event, gap fills, reconnects."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.fanin.history import History
from gateway.fanin.ordering import OrderedBroker
from gateway.fanin.redis_broker import RedisBroker
from gateway.fanout.hub import Hub, Subscription
from gateway.fanout.outbound import Flusher, Outbound
from gateway.fanout.publication import Publication
from gateway.fanout.stats import Stats
from shared.channels import event_channel, history_key, state_key
from shared.messages import SeatChange, utc_now_iso
from shared.publisher import Publisher
from tests.support.connections import FakeConnection
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until


def _ignore(seconds: float) -> None:
    """A latency observer that keeps nothing."""


class Recorder:
    """A broker event handler that keeps what it got, per event."""

    def __init__(self) -> None:
        self.received: dict[int, list[int]] = {}
        self.floors: dict[int, int] = {}
        self.reads = 0

    def handle_publication(self, publication: Publication) -> None:
        self.received.setdefault(publication.event_id, []).append(publication.seq)

    def recovery_floor(self, event_id: int) -> int | None:
        return self.floors.get(event_id)

    def input_arrived(self) -> None:
        self.reads += 1


def change(event_id: int, seq: int) -> SeatChange:
    return SeatChange(
        "booking_created", event_id, f"BK-{seq:06x}", 10, 1, 100 - seq, seq, utc_now_iso()
    )


@pytest.fixture
def stats() -> Stats:
    return Stats()


@pytest.fixture
async def broker(
    redis_server: RedisServer, redis: aioredis.Redis, stats: Stats
) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(redis_server.url, History(redis), stats, keepalive_interval=1.0)
    yield broker
    await broker.close()


async def running(broker: RedisBroker, handler: object) -> asyncio.Task[None]:
    task = asyncio.create_task(broker.run(handler))  # type: ignore[arg-type]
    await async_wait_until(_true(lambda: broker.connected), timeout=10, what="broker link")
    return task


def _true(check: object) -> object:
    async def condition() -> bool:
        return bool(check())  # type: ignore[operator]

    return condition


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def redis_channels(redis: aioredis.Redis) -> set[str]:
    return {c.decode() for c in await redis.pubsub_channels("booking:event:*")}


async def test_redis_subscriptions_follow_random_watchers(
    broker: RedisBroker, redis: aioredis.Redis
) -> None:
    """Hundreds of random watch/unwatch steps: Redis's channels always settle to the watched set."""
    stats = Stats()
    hub = Hub(broker, 1 << 20, Flusher(_ignore), stats)
    task = await running(broker, hub)
    rnd = random.Random(1234)
    live: list[Subscription] = []
    for step in range(300):
        if live and rnd.random() < 0.45:
            hub.unsubscribe(live.pop(rnd.randrange(len(live))))
        else:
            outbound = Outbound(FakeConnection(), b"", 1024, stats, Flusher(_ignore))
            watcher = Subscription(rnd.randint(1, 12), outbound)
            await hub.subscribe(watcher)
            live.append(watcher)
        if step % 25 == 24:
            expected = {event_channel(e) for e in hub.watched_events()}
            assert broker.subscribed_events() == hub.watched_events()
            await async_wait_until(
                lambda expected=expected: _equal(redis, expected), timeout=10, what="redis channels"
            )
    for watcher in live:
        hub.unsubscribe(watcher)
    assert hub.watched_events() == frozenset()
    await async_wait_until(lambda: _equal(redis, set()), timeout=10, what="no channels left")
    await stop(task)


async def _equal(redis: aioredis.Redis, expected: set[str]) -> bool:
    return await redis_channels(redis) == expected


async def test_seq_jump_is_filled_from_history(
    broker: RedisBroker, redis: aioredis.Redis, stats: Stats
) -> None:
    """A message that never came through pub/sub is read from history, in order, before the next."""
    recorder = Recorder()
    task = await running(broker, recorder)
    await broker.subscribe(21)
    publisher = Publisher(redis)
    await publisher.publish(change(21, 1))
    # seq 2 and 3 reach history and state, but are never published on the channel.
    for seq in (2, 3):
        await redis.xadd(history_key(21), {"payload": change(21, seq).payload()}, id=f"{seq}-0")
        await redis.hset(state_key(21), mapping={"seq": seq, "availableSeats": 100 - seq})
    await publisher.publish(change(21, 4))
    await async_wait_until(
        _true(lambda: recorder.received.get(21, [])[-1:] == [4]), timeout=10, what="seq 4"
    )
    assert recorder.received[21] == [1, 2, 3, 4]
    assert stats.gaps_filled == 2
    await stop(task)


class HeldHistory(History):
    """History whose range reads wait until the test lets them go."""

    def __init__(self, redis: aioredis.Redis) -> None:
        super().__init__(redis)
        self.release = asyncio.Event()

    async def read(
        self, event_id: int, first_seq: int, last_seq: int | None = None
    ) -> list[Publication]:
        await self.release.wait()
        return await super().read(event_id, first_seq, last_seq)


async def test_messages_arriving_during_a_gap_fill_wait_in_order(
    redis_server: RedisServer, redis: aioredis.Redis, stats: Stats
) -> None:
    """Replies that come while history is read queue behind it: nothing overtakes the fill."""
    history = HeldHistory(redis)
    broker = RedisBroker(redis_server.url, history, stats)
    recorder = Recorder()
    task = await running(broker, recorder)
    for event_id in (22, 23):
        await broker.subscribe(event_id)
    publisher = Publisher(redis)
    await publisher.publish(change(22, 1))
    for seq in (2, 3):
        await redis.xadd(history_key(22), {"payload": change(22, seq).payload()}, id=f"{seq}-0")
        await redis.hset(state_key(22), mapping={"seq": seq, "availableSeats": 100 - seq})
    for event_id, seq in ((22, 4), (22, 5), (23, 1), (22, 6), (23, 2)):
        await publisher.publish(change(event_id, seq))
    link = broker._link
    assert link is not None
    await async_wait_until(_true(lambda: len(link.backlog) == 4), timeout=10, what="the backlog")
    assert recorder.received == {22: [1]}
    history.release.set()
    await async_wait_until(
        _true(lambda: len(recorder.received.get(22, [])) == 6), timeout=10, what="seq 6"
    )
    await async_wait_until(
        _true(lambda: len(recorder.received.get(23, [])) == 2), timeout=10, what="event 23"
    )
    assert recorder.received == {22: [1, 2, 3, 4, 5, 6], 23: [1, 2]}
    assert link.catching_up is None
    await stop(task)
    await broker.close()


async def test_duplicates_and_old_seqs_are_dropped(
    broker: RedisBroker, redis: aioredis.Redis
) -> None:
    """A seq the replica already handed on is never handed on again."""
    recorder = Recorder()
    task = await running(broker, recorder)
    await broker.subscribe(5)
    for seq in (1, 2, 2, 1, 3):
        await redis.publish(event_channel(5), change(5, seq).payload())
    await async_wait_until(
        _true(lambda: 3 in recorder.received.get(5, [])), timeout=10, what="seq 3"
    )
    assert recorder.received[5] == [1, 2, 3]
    await stop(task)


async def test_malformed_publications_are_skipped(
    broker: RedisBroker, redis: aioredis.Redis
) -> None:
    """Foreign or broken payloads on an event channel are ignored; the feed goes on."""
    recorder = Recorder()
    task = await running(broker, recorder)
    await broker.subscribe(6)
    for payload in (b"garbage", b"{}", b'{"eventId": 99, "seq": 1}', change(6, 1).payload()):
        await redis.publish(event_channel(6), payload)
    await async_wait_until(_true(lambda: recorder.received.get(6) == [1]), timeout=10, what="seq 1")
    await stop(task)


async def test_lost_link_resubscribes_and_fills_the_gap(
    broker: RedisBroker, redis: aioredis.Redis, stats: Stats
) -> None:
    """When Redis drops the pub/sub connection, the broker reconnects and replays what it missed."""
    recorder = Recorder()
    task = await running(broker, recorder)
    await broker.subscribe(8)
    publisher = Publisher(redis)
    await publisher.publish(change(8, 1))
    await async_wait_until(_true(lambda: recorder.received.get(8) == [1]), timeout=10, what="seq 1")
    await redis.client_kill_filter(_type="pubsub")
    for seq in range(2, 6):  # published while the replica may be away
        await publisher.publish(change(8, seq))
    await async_wait_until(_true(lambda: broker.connected), timeout=10, what="reconnect")
    await publisher.publish(change(8, 6))
    await async_wait_until(
        _true(lambda: 6 in recorder.received.get(8, [])), timeout=10, what="seq 6"
    )
    assert recorder.received[8] == [1, 2, 3, 4, 5, 6]
    assert stats.redis_reconnects == 1
    await stop(task)


async def test_redis_restart_loses_nothing(
    redis_server: RedisServer, broker: RedisBroker, redis: aioredis.Redis, stats: Stats
) -> None:
    """Redis restarts empty mid-stream: messages published right after are still handed on in order."""
    recorder = Recorder()
    task = await running(broker, recorder)
    await broker.subscribe(30)
    publisher = Publisher(redis)
    for seq in range(1, 4):
        await publisher.publish(change(30, seq))
    await async_wait_until(
        _true(lambda: recorder.received.get(30) == [1, 2, 3]), timeout=10, what="1-3"
    )
    await asyncio.to_thread(redis_server.restart)
    for seq in range(4, 8):
        await publisher.publish(change(30, seq))
    await async_wait_until(_true(lambda: broker.connected), timeout=15, what="reconnect")
    for seq in range(8, 10):
        await publisher.publish(change(30, seq))
    await async_wait_until(
        _true(lambda: 9 in recorder.received.get(30, [])), timeout=15, what="seq 9"
    )
    assert recorder.received[30] == list(range(1, 10))
    assert stats.redis_reconnects >= 1
    await stop(task)


async def test_subscribe_while_redis_is_down_times_out(redis_server: RedisServer) -> None:
    """With Redis gone a subscribe fails within its timeout instead of hanging."""
    from gateway.fanin.broker import BrokerUnavailable

    client = aioredis.Redis(port=redis_server.port)
    broker = RedisBroker(redis_server.url, History(client), Stats(), subscribe_timeout=0.5)
    redis_server.stop()
    task = asyncio.create_task(broker.run(Recorder()))
    with pytest.raises(BrokerUnavailable):
        await broker.subscribe(1)
    assert not broker.connected
    await stop(task)
    await broker.close()
    await client.aclose()


async def test_history_reads_queue_instead_of_failing(redis: aioredis.Redis) -> None:
    """A burst of 500 concurrent state and history reads (subscribers arriving at once) all succeed,
    although the Redis client's pool holds only 100 connections."""
    await Publisher(redis).publish(change(3, 1))
    history = History(redis)
    states = await asyncio.gather(*(history.state(3) for _ in range(500)))
    reads = await asyncio.gather(*(history.read(3, 1) for _ in range(500)))
    assert {(s.seq, s.available_seats) for s in states} == {(1, 99)}
    assert {tuple(p.seq for p in r) for r in reads} == {(1,)}


class TrimmedHistory:
    """History that kept only seqs 9 and 10 of event 31 (HISTORY_SIZE outrun)."""

    async def read(
        self, event_id: int, first_seq: int, last_seq: int | None = None
    ) -> list[Publication]:
        return [
            Publication(change(event_id, seq).payload(), event_id, seq)
            for seq in (9, 10)
            if seq >= first_seq and (last_seq is None or seq <= last_seq)
        ]


async def test_a_reconnect_fill_that_history_no_longer_covers_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After a reconnect, history starting past the gap says which seqs watchers missed."""
    broker = OrderedBroker(TrimmedHistory(), Stats(), subscribe_timeout=1, history_timeout=1)  # type: ignore[arg-type]
    recorder = Recorder()
    broker._handler = recorder
    broker._desired.add(31)
    broker._last_seq[31] = 5
    with caplog.at_level(logging.WARNING, logger="gateway.fanin.ordering"):
        await broker._fill_after_reconnect(31)
    assert recorder.received == {31: [9, 10]}
    [record] = [r for r in caplog.records if r.getMessage() == "history no longer holds a gap"]
    assert (record.first, record.oldest) == (6, 9)  # type: ignore[attr-defined]
