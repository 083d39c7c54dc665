"""The hub's subscriptions to the broker: one per event, confirmed before anyone starts, rolled back."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fanin.broker import BrokerUnavailable
from gateway.fanout.hub import Hub, Subscription
from gateway.fanout.outbound import Flusher, Outbound
from gateway.fanout.stats import Stats
from tests.support.connections import FakeConnection
from tests.support.wait import scheduled_callbacks_run
from tests.unit.gateway.session.test_sessions import GatedBroker, until


def _ignore(seconds: float) -> None:
    """A latency observer that keeps nothing."""


def watcher(event_id: int, last_seq: int = -1) -> Subscription:
    stats = Stats()
    outbound = Outbound(FakeConnection(), b"", 1 << 20, stats, Flusher(_ignore))
    return Subscription(event_id, outbound, last_seq)


@pytest.fixture
def broker() -> GatedBroker:
    return GatedBroker()


@pytest.fixture
def hub(broker: GatedBroker) -> Hub:
    return Hub(broker, 1 << 20, Flusher(_ignore), Stats())


async def test_concurrent_first_watchers_subscribe_once_and_wait(
    hub: Hub, broker: GatedBroker
) -> None:
    """Twenty watchers of a new event: one broker subscribe, and none starts before it is confirmed."""
    broker.gate.clear()
    tasks = [asyncio.create_task(hub.subscribe(watcher(9))) for _ in range(20)]
    await until(lambda: broker.subscribe_calls == 1)
    for _ in range(3):  # every task has run as far as it can
        await scheduled_callbacks_run()
    assert not any(task.done() for task in tasks)
    broker.gate.set()
    await asyncio.gather(*tasks)
    assert broker.subscribe_calls == 1
    assert hub.watchers_of(9) == 20


async def test_failed_subscribe_rolls_back(hub: Hub, broker: GatedBroker) -> None:
    """A broker failure removes the watcher and the subscription; the next watcher tries afresh."""
    broker.failing = {4}
    with pytest.raises(BrokerUnavailable):
        await hub.subscribe(watcher(4))
    assert hub.watched_events() == frozenset()
    assert broker.subscribed == set()
    broker.failing = set()
    await hub.subscribe(watcher(4))
    assert broker.subscribed == {4}


async def test_cancelled_subscribe_rolls_back(hub: Hub, broker: GatedBroker) -> None:
    """A subscribe cancelled while the broker works (the client left) leaves nothing behind."""
    broker.gate.clear()
    task = asyncio.create_task(hub.subscribe(watcher(5)))
    await until(lambda: broker.subscribed == {5})  # the subscribe waits on the broker
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert hub.watched_events() == frozenset()
    assert broker.subscribed == set()


async def test_the_last_watcher_leaving_drops_the_subscription(
    hub: Hub, broker: GatedBroker
) -> None:
    """Unsubscribing (twice is fine) keeps the event while anyone watches it, then drops it."""
    first, second = watcher(6), watcher(6)
    await hub.subscribe(first)
    await hub.subscribe(second)
    hub.unsubscribe(first)
    hub.unsubscribe(first)
    assert broker.subscribed == {6}
    assert hub.subscription_count == 1
    hub.unsubscribe(second)
    assert broker.subscribed == set()
    assert hub.subscription_count == 0
