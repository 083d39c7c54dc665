"""The hub's bookkeeping and fan-out, driven through real sessions on fake sockets.

The broker here is an in-memory stand-in that records what the hub asks of
it and can be told to fail; the invariant under every random sequence of
subscribe / switch / add / unsubscribe / disconnect, run concurrently, is
that the broker's subscriptions equal the set of watched events and that
nothing is left behind once every session is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.broker import BrokerEventHandler, BrokerUnavailable
from gateway.flusher import Flusher
from gateway.history import EventState
from gateway.hub import LOCK_SHARDS, Hub, Subscription
from gateway.metrics import Stats
from gateway.publication import Publication
from gateway.replica import Replica, Runtime
from gateway.session import Session
from gateway.writer import Writer
from shared.settings import gateway_settings
from shared.tokens import Claims, TokenVerifier
from tests.conftest import JWT_SECRET
from tests.support.wait import async_wait_until, scheduled_callbacks_run

EVENTS = range(1, 7)


class MemoryBroker:
    """Records the hub's requests; `failing` events refuse to subscribe."""

    def __init__(self) -> None:
        self.subscribed: set[int] = set()
        self.subscribe_calls = 0
        self.failing: set[int] = set()
        # Held shut to keep subscribes in flight while a test piles more on.
        self.gate = asyncio.Event()
        self.gate.set()
        self.connected = True

    def subscribed_events(self) -> frozenset[int]:
        return frozenset(self.subscribed)

    async def subscribe(self, event_id: int) -> None:
        assert event_id not in self.subscribed, "the hub subscribed an event twice"
        self.subscribe_calls += 1
        self.subscribed.add(event_id)
        await scheduled_callbacks_run()  # a round trip's worth of other tasks run first
        await self.gate.wait()
        if event_id in self.failing:
            raise BrokerUnavailable(f"event {event_id}")

    def unsubscribe(self, event_id: int) -> None:
        assert event_id in self.subscribed, "the hub unsubscribed an event it never subscribed"
        self.subscribed.discard(event_id)

    async def run(self, handler: BrokerEventHandler) -> None:
        await asyncio.Event().wait()


class EmptyHistory:
    async def state(self, event_id: int) -> EventState:
        await scheduled_callbacks_run()  # as a Redis read would, let others run
        return EventState(seq=None, available_seats=None)

    async def read(
        self, event_id: int, first_seq: int, last_seq: int | None = None
    ) -> list[Publication]:
        await scheduled_callbacks_run()  # as a Redis read would, let others run
        return []


class FakeSocket:
    """Feeds frames to a session and keeps what it sends."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.close_frame: tuple[int, str] | None = None
        self.changed = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.inbox.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(orjson.loads(message["text"]))
        self.changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.close_frame = (code, reason or "")
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})

    def push(self, message: dict[str, Any]) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": orjson.dumps(message).decode()})

    async def wait_for_sent(self, count: int) -> None:
        async with asyncio.timeout(5):
            while len(self.sent) < count:
                self.changed.clear()
                await self.changed.wait()


def make_replica(broker: MemoryBroker, **env: str) -> Replica:
    settings = gateway_settings({"JWT_SECRET": JWT_SECRET, **env})
    replica = Replica(settings=settings, verifier=TokenVerifier(settings.jwt))
    hub = Hub(broker, settings.outbound_buffer_bytes, replica.flusher, replica.stats)  # type: ignore[arg-type]
    replica.runtime = Runtime(redis=None, history=EmptyHistory(), broker=broker, hub=hub)  # type: ignore[arg-type]
    return replica


class Client:
    """A real `Session` on a fake socket, with its task."""

    def __init__(self, replica: Replica) -> None:
        self.socket = FakeSocket()
        self.session = Session(
            self.socket, replica, Claims(user_id=1, is_admin=False, expires_at=None)
        )  # type: ignore[arg-type]
        replica.add_session(self.session)
        self.task = asyncio.create_task(self._run(replica))
        self.expected = 1  # connection_established

    async def _run(self, replica: Replica) -> None:
        try:
            await self.session.run(None)
        finally:
            replica.remove_session(self.session)

    def send(self, message: dict[str, Any]) -> None:
        """Send a command that gets exactly one reply."""
        self.socket.push(message)
        self.expected += 1

    async def settle(self) -> None:
        await self.socket.wait_for_sent(self.expected)

    async def disconnect(self) -> None:
        self.socket.inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
        async with asyncio.timeout(5):
            await self.task


class HubMachine(RuleBasedStateMachine):
    """Random, partly concurrent session traffic; the broker always mirrors the hub."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.broker = MemoryBroker()
        self.replica = self.run(self._replica())
        self.clients: list[Client] = []

    async def _replica(self) -> Replica:
        return make_replica(
            self.broker, MAX_SUBSCRIPTIONS="3", MAX_CLIENT_MESSAGES_PER_SECOND="100000"
        )

    def run(self, coroutine: Any) -> Any:
        return self.loop.run_until_complete(coroutine)

    @initialize()
    def first_client(self) -> None:
        self.run(self._open())

    async def _open(self) -> None:
        client = Client(self.replica)
        await client.settle()
        self.clients.append(client)

    @rule()
    def open_client(self) -> None:
        if len(self.clients) < 5:
            self.run(self._open())

    @rule(
        ops=st.lists(
            st.tuples(
                st.integers(0, 50),
                st.sampled_from(["switch", "add", "unsubscribe"]),
                st.sampled_from(list(EVENTS)),
            ),
            min_size=1,
            max_size=8,
        ),
        failing=st.sets(st.sampled_from(list(EVENTS)), max_size=2),
    )
    def concurrent_commands(self, ops: list[tuple[int, str, int]], failing: set[int]) -> None:
        """Several sessions' commands in flight at once, some subscribes failing."""
        clients = self._live()
        if not clients:
            return
        self.broker.failing = failing
        for pick, op, event_id in ops:
            client = clients[pick % len(clients)]
            if op == "unsubscribe":
                client.send({"type": "unsubscribe_event", "eventId": event_id})
            else:
                mode = "add" if op == "add" else "replace"
                client.send({"type": "subscribe_event", "eventId": event_id, "mode": mode})
        self.run(_settle(clients))
        self.broker.failing = set()

    @rule(pick=st.integers(0, 50))
    def disconnect(self, pick: int) -> None:
        if self.clients:
            self.run(self.clients.pop(pick % len(self.clients)).disconnect())

    def _live(self) -> list[Client]:
        return list(self.clients)

    @invariant()
    def broker_mirrors_hub(self) -> None:
        hub = self.replica.hub
        watched = set().union(*(s.watched_events for s in self.replica.sessions))
        assert hub.watched_events() == watched
        assert self.broker.subscribed_events() == watched
        assert hub.subscription_count == sum(len(s.watched_events) for s in self.replica.sessions)
        assert all(len(s.watched_events) <= 3 for s in self.replica.sessions)

    def teardown(self) -> None:
        async def close_all() -> None:
            for client in self._live():
                await client.disconnect()

        self.run(close_all())
        assert self.replica.hub.watched_events() == frozenset()
        assert self.broker.subscribed == set()
        assert self.replica.hub.subscription_count == 0
        assert not self.replica.sessions
        self.loop.close()


TestHubMachine = HubMachine.TestCase
TestHubMachine.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


async def until(condition: Callable[[], bool]) -> None:
    async def check() -> bool:
        return condition()

    await async_wait_until(check, timeout=5)


async def _settle(clients: list[Client]) -> None:
    await asyncio.gather(*(c.settle() for c in clients))


@pytest.fixture
def broker() -> MemoryBroker:
    return MemoryBroker()


@pytest.fixture
def replica(broker: MemoryBroker) -> Replica:
    return make_replica(broker)


def writer(limit: int = 1 << 20) -> Writer:
    return Writer(FakeSocket(), limit, Stats(), close_timeout=1.0)  # type: ignore[arg-type]


def publication(event_id: int, seq: int, size: int = 10) -> Publication:
    data = orjson.dumps({"eventId": event_id, "seq": seq, "pad": "x" * size})
    return Publication(data, event_id=event_id, seq=seq)


async def test_concurrent_first_watchers_subscribe_once_and_wait(broker: MemoryBroker) -> None:
    """Twenty watchers of a new event: one broker subscribe, and none starts before it is confirmed."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    broker.gate.clear()
    tasks = [asyncio.create_task(hub.subscribe(Subscription(9, writer()))) for _ in range(20)]
    await until(lambda: broker.subscribe_calls == 1)
    lock = hub._locks[9 % LOCK_SHARDS]
    # The other 19 queue on the hub's lock for the event: none may start before the broker.
    await until(lambda: len(lock._waiters or ()) == 19)  # type: ignore[attr-defined]
    assert not any(task.done() for task in tasks)
    broker.gate.set()
    await asyncio.gather(*tasks)
    assert broker.subscribe_calls == 1
    assert hub.watchers_of(9) == 20


async def test_failed_subscribe_rolls_back(broker: MemoryBroker) -> None:
    """A broker failure removes the watcher and the subscription; the next watcher tries afresh."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    broker.failing = {4}
    with pytest.raises(BrokerUnavailable):
        await hub.subscribe(Subscription(4, writer()))
    assert hub.watched_events() == frozenset()
    assert broker.subscribed == set()
    broker.failing = set()
    await hub.subscribe(Subscription(4, writer()))
    assert broker.subscribed == {4}


async def test_cancelled_subscribe_rolls_back(broker: MemoryBroker) -> None:
    """A subscribe cancelled while the broker works (the client left) leaves nothing behind."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    broker.gate.clear()
    task = asyncio.create_task(hub.subscribe(Subscription(5, writer())))
    await until(lambda: broker.subscribed == {5})  # the subscribe waits on the broker
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.watched_events() == frozenset()
    assert broker.subscribed == set()


async def test_fan_out_shares_one_object_and_filters_seq(broker: MemoryBroker) -> None:
    """Every watcher's writer gets the same Publication; duplicates and stale seqs are skipped."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    watchers = [Subscription(3, writer(), last_seq=0) for _ in range(3)]
    for watcher in watchers:
        await hub.subscribe(watcher)
        watcher.go_live()
    first, again, older, second = (
        publication(3, 1),
        publication(3, 1),
        publication(3, 1),
        publication(3, 2),
    )
    for item in (first, again, older, second):
        hub.handle_publication(item)
    for watcher in watchers:
        queued = list(watcher.writer._queue)
        assert queued == [first, second]
        assert queued[0] is first


async def test_held_messages_go_out_after_replay_without_duplicates(broker: MemoryBroker) -> None:
    """A recovering watcher holds live messages, then sends only those newer than its replay."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    watcher = Subscription(3, writer(), last_seq=4)
    await hub.subscribe(watcher)
    for seq in (6, 7, 8):
        hub.handle_publication(publication(3, seq))
    assert list(watcher.writer._queue) == []
    for seq in (5, 6, 7):  # the replay from history
        watcher.deliver(publication(3, seq))
    watcher.go_live()
    hub.handle_publication(publication(3, 9))
    assert [p.seq for p in watcher.writer._queue] == [5, 6, 7, 8, 9]  # type: ignore[attr-defined]


async def test_recovery_floor_is_the_lowest_known_seq(broker: MemoryBroker) -> None:
    """The broker fills gaps from the lowest seq a watcher has; unknown ones do not count."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    assert hub.recovery_floor(2) is None
    await hub.subscribe(Subscription(2, writer()))
    assert hub.recovery_floor(2) is None
    await hub.subscribe(Subscription(2, writer(), last_seq=7))
    await hub.subscribe(Subscription(2, writer(), last_seq=3))
    assert hub.recovery_floor(2) == 3


async def test_overflow_closes_only_the_slow_writer(broker: MemoryBroker) -> None:
    """A writer over its byte budget is closed with 4008 and dropped; the others get everything."""
    hub = Hub(broker, 1 << 20, Flusher(float), Stats())  # type: ignore[arg-type]
    slow, fast = Subscription(1, writer(limit=1024), 0), Subscription(1, writer(), 0)
    for watcher in (slow, fast):
        await hub.subscribe(watcher)
        watcher.go_live()
    for seq in range(1, 21):
        hub.handle_publication(publication(1, seq, size=200))
    assert slow.writer.close_request == (4008, "Slow consumer: outbound buffer overflowed")
    assert list(slow.writer._queue) == []
    assert [p.seq for p in fast.writer._queue] == list(range(1, 21))  # type: ignore[attr-defined]


async def test_one_large_frame_always_fits() -> None:
    """A frame larger than the whole budget still goes out when nothing else is queued."""
    small = writer(limit=1024)
    assert small.offer(publication(1, 1, size=5000))
    assert small.close_request is None
    assert not small.offer(publication(1, 2, size=10))
    assert small.close_request is not None


async def test_writer_sends_in_order_then_closes() -> None:
    """The writer task writes queued frames in order, then the close frame once asked to."""
    out = writer()
    socket: FakeSocket = out._socket  # type: ignore[assignment]
    task = asyncio.create_task(out.run())
    for seq in (1, 2, 3):
        out.offer(publication(7, seq))
    await socket.wait_for_sent(3)
    out.close(1012, "bye")
    async with asyncio.timeout(5):
        await task
    assert [m["seq"] for m in socket.sent] == [1, 2, 3]
    assert socket.close_frame == (1012, "bye")
    assert not out.offer(publication(7, 4))


async def test_disconnected_sessions_release_everything(
    replica: Replica, broker: MemoryBroker
) -> None:
    """Sessions that watched several events and left leave no watcher and no broker subscription."""
    clients = [Client(replica) for _ in range(5)]
    for index, client in enumerate(clients):
        for event_id in (1, 2, 3 + index):
            client.send({"type": "subscribe_event", "eventId": event_id, "mode": "add"})
    await asyncio.gather(*(c.settle() for c in clients))
    assert broker.subscribed == {1, 2, 3, 4, 5, 6, 7}
    assert replica.hub.subscription_count == 15
    for client in clients:
        await client.disconnect()
    assert broker.subscribed == set()
    assert replica.hub.subscription_count == 0


async def test_cancelled_sessions_release_everything(
    replica: Replica, broker: MemoryBroker
) -> None:
    """A session whose task is cancelled (server shutdown), even mid-subscribe, leaves nothing behind."""
    settled, stuck = Client(replica), Client(replica)
    settled.send({"type": "subscribe_event", "eventId": 1})
    await settled.settle()
    await stuck.settle()
    broker.gate.clear()  # the next first-watcher subscribe hangs in the broker
    stuck.send({"type": "subscribe_event", "eventId": 2})
    await until(lambda: broker.subscribed == {1, 2})
    for client in (settled, stuck):
        client.task.cancel()
    for client in (settled, stuck):
        with pytest.raises(asyncio.CancelledError):
            await client.task
    assert replica.hub.watched_events() == frozenset()
    assert broker.subscribed == set()
    assert not replica.sessions
