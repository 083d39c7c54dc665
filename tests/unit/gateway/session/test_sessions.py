"""Sessions driving the hub: whatever clients do, the broker's subscriptions mirror what they watch.

Real `Session`s on stand-in connections (tests/support/connections.py), a
real `Hub`, and an in-memory broker that records what the hub asks of it and
can be told to fail or to hold a subscribe. The invariant under every random
sequence of subscribe / switch / add / unsubscribe / disconnect, run
concurrently, is that the broker's subscriptions equal the set of watched
events, and that nothing is left once every session is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from gateway.fanin.broker import BrokerUnavailable
from gateway.fanin.memory_broker import MemoryBroker
from gateway.fanout.hub import Hub
from gateway.process.replica import Replica, Runtime
from gateway.session.session import Session
from shared.settings import gateway_settings
from shared.tokens import Claims, TokenVerifier
from tests.conftest import JWT_SECRET
from tests.support.connections import EmptyHistory, FakeConnection
from tests.support.wait import async_wait_until, scheduled_callbacks_run

EVENTS = range(1, 7)


class GatedBroker(MemoryBroker):
    """A memory broker whose subscribes take a round trip, can be held, and can fail."""

    def __init__(self) -> None:
        super().__init__()
        self.subscribe_calls = 0
        self.failing: set[int] = set()
        # Held shut to keep subscribes in flight while a test piles more on.
        self.gate = asyncio.Event()
        self.gate.set()

    async def subscribe(self, event_id: int) -> None:
        assert event_id not in self.subscribed, "the hub subscribed an event twice"
        self.subscribe_calls += 1
        await super().subscribe(event_id)
        await scheduled_callbacks_run()  # a round trip's worth of other tasks run first
        await self.gate.wait()
        if event_id in self.failing:
            raise BrokerUnavailable(f"event {event_id}")

    def unsubscribe(self, event_id: int) -> None:
        assert event_id in self.subscribed, "the hub unsubscribed an event it never subscribed"
        super().unsubscribe(event_id)


def make_replica(broker: MemoryBroker, **env: str) -> Replica:
    settings = gateway_settings({"JWT_SECRET": JWT_SECRET, **env})
    replica = Replica(settings=settings, verifier=TokenVerifier(settings.jwt))
    hub = Hub(broker, settings.outbound_buffer_bytes, replica.flusher, replica.stats)
    replica.runtime = Runtime(redis=None, history=EmptyHistory(), broker=broker, hub=hub)  # type: ignore[arg-type]
    return replica


class Client:
    """A real `Session` on a stand-in connection, admitted as the endpoint admits one."""

    def __init__(self, replica: Replica) -> None:
        self.connection = FakeConnection()
        self.replica = replica
        self.session = Session(
            self.connection,  # type: ignore[arg-type]
            b"",
            replica.services(),
            Claims(user_id=1, is_admin=False, expires_at=None),
        )
        replica.sessions.add(self.session)
        self.connection.reader = self.session
        self.session.start(None)
        self.expected = 1  # connection_established

    def send(self, message: dict[str, Any]) -> None:
        """Send a command that gets exactly one reply."""
        self.connection.push(message)
        self.expected += 1

    async def settle(self) -> None:
        await async_wait_until(
            _true(lambda: len(self.connection.sent) >= self.expected and not self.connection.tasks),
            timeout=5,
            what="every reply",
        )

    async def disconnect(self) -> None:
        self.connection.disconnect()
        await until(lambda: self.session not in set(self.replica.sessions))


class HubMachine(RuleBasedStateMachine):
    """Random, partly concurrent session traffic; the broker always mirrors the hub."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.broker = GatedBroker()
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
        sessions = [client.session for client in self.clients]
        watched = set().union(*(s.watched_events for s in sessions))
        assert hub.watched_events() == watched
        assert self.broker.subscribed_events() == watched
        assert hub.subscription_count == sum(len(s.watched_events) for s in sessions)
        assert all(len(s.watched_events) <= 3 for s in sessions)

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
    await async_wait_until(_true(condition), timeout=5)


def _true(condition: Callable[[], bool]) -> Callable[[], Any]:
    async def check() -> bool:
        return condition()

    return check


async def _settle(clients: list[Client]) -> None:
    await asyncio.gather(*(c.settle() for c in clients))


@pytest.fixture
def broker() -> GatedBroker:
    return GatedBroker()


@pytest.fixture
def replica(broker: GatedBroker) -> Replica:
    return make_replica(broker)


async def test_disconnected_sessions_release_everything(
    replica: Replica, broker: GatedBroker
) -> None:
    """Sessions that watched several events and left leave no watcher and no broker subscription."""
    clients = [Client(replica) for _ in range(5)]
    for index, client in enumerate(clients):
        for event_id in (1, 2, 3 + index):
            client.send({"type": "subscribe_event", "eventId": event_id, "mode": "add"})
    await _settle(clients)
    assert broker.subscribed == {1, 2, 3, 4, 5, 6, 7}
    assert replica.hub.subscription_count == 15
    for client in clients:
        await client.disconnect()
    assert broker.subscribed == set()
    assert replica.hub.subscription_count == 0
    assert len(replica.sessions) == 0


async def test_cancelled_sessions_release_everything(replica: Replica, broker: GatedBroker) -> None:
    """A session whose reading is cancelled (server shutdown), even mid-subscribe, leaves nothing."""
    settled, stuck = Client(replica), Client(replica)
    settled.send({"type": "subscribe_event", "eventId": 1})
    await settled.settle()
    await stuck.settle()
    broker.gate.clear()  # the next first-watcher subscribe hangs in the broker
    stuck.send({"type": "subscribe_event", "eventId": 2})
    await until(lambda: broker.subscribed == {1, 2})
    (task,) = stuck.connection.tasks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    settled.connection.disconnect()
    await until(lambda: len(replica.sessions) == 0)
    assert replica.hub.watched_events() == frozenset()
    assert broker.subscribed == set()


async def test_a_session_closed_mid_fan_out_leaves_after_it(broker: GatedBroker) -> None:
    """A watcher closed for overflowing while the hub fans out is dropped once the fan-out is done.

    The close is decided inside the hub's loop over the event's watchers; the
    session leaves the hub just after, so the loop never sees its dict change,
    and the other watchers get the message.
    """
    small = make_replica(broker, OUTBOUND_BUFFER_BYTES="1024")
    running = asyncio.create_task(broker.run(small.hub))
    clients = [Client(small) for _ in range(3)]
    for client in clients:
        client.send({"type": "subscribe_event", "eventId": 4})
    await _settle(clients)
    clients[0].connection.transport.get_write_buffer_size = lambda: 4096  # type: ignore[method-assign]
    assert broker.publish(b'{"eventId": 4, "seq": 1, "pad": "' + b"x" * 300 + b'"}')
    assert clients[0].connection.close_frame == (4008, "Slow consumer: outbound buffer overflowed")
    for client in clients[1:]:
        assert [m.get("seq") for m in client.connection.sent][-1] == 1
    await until(lambda: len(small.sessions) == 2)
    assert small.hub.subscription_count == 2
    running.cancel()
