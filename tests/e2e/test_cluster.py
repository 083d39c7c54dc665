"""seatcast on a real three-master Redis Cluster: sharded pub/sub end to end, a master
restarted mid-stream and a slot migrated mid-stream, with nothing lost.

The booking API publishes with SPUBLISH; two gateway replicas subscribe with
SSUBSCRIBE on the master owning each event's slot. The end-to-end tests are
skipped, with the reason, where no Redis 7 `redis-server` is installed; the
slot map and the reply matching are checked without a server too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from redis.crc import key_slot

from booking_api.restore import SENTINEL_KEY
from gateway.fanin.cluster_broker import SSUBSCRIBE, SUNSUBSCRIBE, _NodeLink
from gateway.fanin.cluster_slots import parse_cluster_slots
from shared.channels import event_channel
from tests.support.binaries import skip_missing
from tests.support.processes import ServiceProcess
from tests.support.redis_cluster import RedisClusterServers, cluster_skip_reason
from tests.support.stack import OUTAGE_HISTORY_SIZE
from tests.support.watching import (
    BookingLoad,
    RecordingWatcher,
    Watchers,
    create_event,
    diagnostics,
    event_state,
    reaches,
    report,
    until,
)
from tests.support.ws_client import WsClient

pytestmark = pytest.mark.timeout(180)

WATCHERS_PER_REPLICA = 4


def test_slot_map_finds_the_master_of_an_event_channel() -> None:
    """`CLUSTER SLOTS` ranges map each channel's hash slot to its master; an uncovered slot
    has none."""
    reply = [
        [10923, 16383, [b"10.0.0.3", 7002, b"c"]],
        [0, 5460, [b"10.0.0.1", 7000, b"a"], [b"10.0.0.9", 7009, b"r"]],
        [5461, 9000, [b"10.0.0.2", 7001, b"b"]],
    ]
    slots = parse_cluster_slots(reply)
    assert slots.primaries() == {("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)}
    # The channels hash "3" (slot 1584), "1" (9842: not covered) and "4" (14039).
    assert slots.owner(event_channel(3)) == ("10.0.0.1", 7000)
    assert slots.owner(event_channel(1)) is None
    assert slots.owner(event_channel(4)) == ("10.0.0.3", 7002)


def test_replies_match_commands_in_order_and_a_server_sunsubscribe_stands_out() -> None:
    """A link confirms an event only when the reply to its latest command arrives; an
    error answers the oldest command; a SUNSUBSCRIBE nobody asked for is not a reply."""
    link = _NodeLink(connection=None)  # type: ignore[arg-type]
    link.request(SSUBSCRIBE, 1)
    link.request(SSUBSCRIBE, 2)
    link.request(SUNSUBSCRIBE, 1)
    link.request(SSUBSCRIBE, 1)
    assert link.answered(SSUBSCRIBE, 1)
    assert 1 not in link.confirmed  # newer commands for 1 are in flight
    assert not link.answered(SUNSUBSCRIBE, 2)  # not the oldest command: the server's own
    assert link.failed() == (SSUBSCRIBE, 2)  # e.g. MOVED
    assert 2 not in link.wanted
    assert link.answered(SUNSUBSCRIBE, 1)
    assert link.answered(SSUBSCRIBE, 1)
    assert link.confirmed == {1}
    assert not link.in_flight
    link.lost(1)
    assert link.confirmed == set()
    assert link.wanted == set()


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    reason = cluster_skip_reason()
    if reason is not None:
        skip_missing(reason)
    servers = RedisClusterServers()
    try:
        servers.start()
        yield servers
    finally:
        servers.close()


@dataclass
class Stack:
    cluster: RedisClusterServers
    api: ServiceProcess
    gateways: list[ServiceProcess]
    admin: str
    users: list[str]

    def watchers(self, event_id: int) -> Watchers:
        return Watchers(
            [
                RecordingWatcher([gateway.ws_url], self.users[n % len(self.users)], event_id)
                for gateway in self.gateways
                for n in range(WATCHERS_PER_REPLICA)
            ]
        )

    def load(self, event_id: int) -> BookingLoad:
        return BookingLoad(self.api.http_url, self.users, event_id)


@pytest.fixture
def stack(
    cluster: RedisClusterServers,
    service: Callable[..., ServiceProcess],
    database_url: str,
    token: Callable[..., str],
) -> Stack:
    """An API and two gateway replicas on the cluster, emptied first (event ids restart at 1)."""
    cluster.flush()
    env = {"REDIS_URL": cluster.url}
    gateways = [service("gateway", env) for _ in range(2)]
    api = service(
        "booking_api",
        {**env, "DATABASE_URL": database_url, "HISTORY_SIZE": OUTAGE_HISTORY_SIZE},
    )
    return Stack(cluster, api, gateways, token(1, admin=True), [token(100 + n) for n in range(8)])


async def _finish(stack: Stack, watchers: Watchers, load: BookingLoad, event_id: int) -> None:
    """Stop booking, wait for every watcher to reach the final seq, check exactly-once."""
    load.stop()
    final = await event_state(stack.api.http_url, event_id)
    explain = diagnostics(watchers, [stack.api, *stack.gateways])
    await until(lambda: watchers.all_reached(final["seq"]), 60, f"all at {final}", explain)
    await watchers.stop()
    watchers.assert_exactly_once(final["seq"], final["availableSeats"])


async def test_bookings_reach_watchers_on_both_replicas_over_sharded_pubsub(stack: Stack) -> None:
    """Every booking and cancellation reaches the watchers of both replicas once, in order;
    the replicas hold SSUBSCRIBE subscriptions on the owning master only (no classic
    SUBSCRIBE), and `since` replays from the shard's history."""
    event_id = await create_event(stack.api.http_url, stack.admin)
    watchers = stack.watchers(event_id).start()
    await until(watchers.all_subscribed, 30, "watchers subscribed")
    load = stack.load(event_id)
    await load.run(limit=40)
    await _finish(stack, watchers, load, event_id)

    channel = event_channel(event_id)
    owner = stack.cluster.owner(channel)
    async with (
        await WsClient.open(stack.gateways[0].ws_url, "/ws", stack.users[0]) as first,
        await WsClient.open(stack.gateways[1].ws_url, "/ws", stack.users[1]) as second,
    ):
        for client in (first, second):
            await client.recv_type("connection_established")
            await client.send_json({"type": "subscribe_event", "eventId": event_id, "since": 30})
            subscribed = await client.recv_type("subscribed")
            assert subscribed["recovered"] is True
            assert subscribed["seq"] == 40
            replay = await client.collect_seqs(event_id, 40)
            assert [m["seq"] for m in replay] == list(range(31, 41))
        counts = {
            port: stack.cluster.shard_subscribers(port, channel) for port in stack.cluster.ports
        }
    assert counts[owner] == (2, 0), counts
    assert all(counts[port] == (0, 0) for port in counts if port != owner), counts


async def test_restart_of_the_owning_master_mid_stream_loses_nothing(
    request: pytest.FixtureRequest, stack: Stack
) -> None:
    """The master owning the event restarts (empty) while bookings flow (three times with
    --long): every watcher still gets every seq once, in order; an idle event on that
    master gets its state back, so a new subscriber sees its seq instead of null."""
    # A master without the single-Redis sentinel key: only a per-master sentinel notices it.
    owner = next(p for p in stack.cluster.ports if p != stack.cluster.owner(SENTINEL_KEY))
    event_id = await _event_on(stack, owner)
    idle_id = await _event_on(stack, owner)
    await stack.load(idle_id).run(limit=3)
    watchers = stack.watchers(event_id).start()
    await until(watchers.all_subscribed, 30, "watchers subscribed")
    load = stack.load(event_id)
    booking = asyncio.create_task(load.run())
    await until(lambda: watchers.min_seq() >= 15, 30, "15 changes delivered")

    for _ in range(3 if request.config.getoption("--long") else 1):
        await asyncio.to_thread(stack.cluster.stop_node, owner)
        stopped_at, seen = time.monotonic(), watchers.max_seq()
        await asyncio.to_thread(stack.cluster.resume_node, owner)
        report("cluster master down (stop, start, cluster ok)", time.monotonic() - stopped_at)
        await until(
            reaches(watchers.min_seq, seen + 15),
            60,
            "15 changes after restart",
            diagnostics(watchers, [stack.api, *stack.gateways]),
        )
        report(
            "cluster master stopped -> first new message delivered",
            watchers.first_arrival_above(seen) - stopped_at,
        )
    await _finish(stack, watchers, load, event_id)
    await booking

    idle = await event_state(stack.api.http_url, idle_id)
    async with await WsClient.open(
        stack.gateways[0].ws_url, f"/ws/events/{idle_id}", stack.users[0]
    ) as client:
        await client.recv_type("connection_established")
        subscribed = await client.recv_type("subscribed")
    assert (subscribed["seq"], subscribed["availableSeats"]) == (3, idle["availableSeats"])


async def test_slot_migration_mid_stream_moves_the_subscription(stack: Stack) -> None:
    """The event's slot migrates to another master while bookings flow (MOVED for
    publishers, a server-side SUNSUBSCRIBE for subscribers): the replicas re-subscribe on
    the new owner, fill the gap from history, and every watcher gets every seq once."""
    event_id = await create_event(stack.api.http_url, stack.admin)
    channel = event_channel(event_id)
    source = stack.cluster.owner(channel)
    target = next(port for port in stack.cluster.ports if port != source)
    watchers = stack.watchers(event_id).start()
    await until(watchers.all_subscribed, 30, "watchers subscribed")
    load = stack.load(event_id)
    booking = asyncio.create_task(load.run())
    await until(lambda: watchers.min_seq() >= 15, 30, "15 changes delivered")

    moving_at, seen = time.monotonic(), watchers.max_seq()
    await asyncio.to_thread(stack.cluster.move_slot, key_slot(channel.encode()), target)
    moved_at = time.monotonic()
    report("slot migration (IMPORTING .. SETSLOT NODE on all)", moved_at - moving_at)
    await until(
        lambda: watchers.min_seq() >= seen + 15,
        60,
        "15 changes after the move",
        diagnostics(watchers, [stack.api, *stack.gateways]),
    )
    report(
        "slot moved -> every watcher got its next change",
        max(w.received_after(moved_at) or moved_at for w in watchers.watchers) - moved_at,
    )
    assert stack.cluster.owner(channel) == target
    assert stack.cluster.shard_subscribers(target, channel) == (2, 0)
    assert stack.cluster.shard_subscribers(source, channel) == (0, 0)
    await _finish(stack, watchers, load, event_id)
    await booking


async def test_subscribing_after_an_unseen_slot_move_follows_moved(stack: Stack) -> None:
    """A slot the replicas hold no subscription in moves without telling them: their next
    SSUBSCRIBE there is answered MOVED, and they subscribe on the new owner instead."""
    event_id = await create_event(stack.api.http_url, stack.admin)
    channel = event_channel(event_id)
    target = next(port for port in stack.cluster.ports if port != stack.cluster.owner(channel))
    await asyncio.to_thread(stack.cluster.move_slot, key_slot(channel.encode()), target)
    watchers = stack.watchers(event_id).start()
    await until(watchers.all_subscribed, 30, "watchers subscribed after MOVED")
    assert stack.cluster.shard_subscribers(target, channel) == (2, 0)
    assert all("MovedError" in gateway.logs() for gateway in stack.gateways)
    load = stack.load(event_id)
    await load.run(limit=10)
    await _finish(stack, watchers, load, event_id)


async def _event_on(stack: Stack, port: int) -> int:
    """A new event whose slot the master on `port` serves."""
    for _ in range(64):
        event_id = await create_event(stack.api.http_url, stack.admin)
        if stack.cluster.owner(event_channel(event_id)) == port:
            return event_id
    raise AssertionError(f"no event landed on {port}")
