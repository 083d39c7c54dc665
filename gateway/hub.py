"""Which local sessions watch which event, and the fan-out to them.

The hub asks the broker for an event when its first watcher arrives and drops
it when the last one leaves, so the broker's subscriptions always equal the
set of watched events. Fan-out never awaits: it hands the same `Publication`
to each watcher's writer, skipping what a watcher already has; the flusher
writes what the writers gathered at the end of the loop turn.
"""

from __future__ import annotations

import asyncio
from typing import Final

from gateway.broker import Broker
from gateway.flusher import Flusher
from gateway.publication import Publication
from gateway.writer import SLOW_CONSUMER, SLOW_CONSUMER_REASON, Outbound

# `last_seq` of a watcher that does not know its starting point yet.
UNKNOWN_SEQ: Final = -1
LOCK_SHARDS: Final = 64


class Subscription:
    """One session watching one event."""

    __slots__ = ("event_id", "last_seq", "pending", "pending_bytes", "writer")

    def __init__(self, event_id: int, writer: Outbound, last_seq: int = UNKNOWN_SEQ) -> None:
        self.event_id = event_id
        self.writer = writer
        # The highest seq this watcher has (delivered, replayed or the state it started
        # from); UNKNOWN_SEQ until a subscribing session has read the event's state.
        self.last_seq = last_seq
        # Live publications held back while the session replays history; None once live.
        self.pending: list[Publication] | None = []
        self.pending_bytes = 0

    def hold(self, publication: Publication, limit_bytes: int) -> None:
        assert self.pending is not None
        self.pending.append(publication)
        self.pending_bytes += publication.size
        if self.pending_bytes > limit_bytes:
            self.writer.close(SLOW_CONSUMER, SLOW_CONSUMER_REASON)

    def go_live(self) -> None:
        """Send the held publications newer than `last_seq`, then receive live ones."""
        held, self.pending = self.pending or [], None
        for publication in held:
            self.deliver(publication)

    def deliver(self, publication: Publication) -> None:
        if publication.seq > self.last_seq:
            self.last_seq = publication.seq
            self.writer.offer(publication)


class Hub:
    """The watchers of each event on this replica."""

    def __init__(self, broker: Broker, hold_limit_bytes: int, flusher: Flusher) -> None:
        self._broker = broker
        self._hold_limit_bytes = hold_limit_bytes
        self._flusher = flusher
        # event id -> its watchers (a dict as an insertion-ordered set).
        self._watchers: dict[int, dict[Subscription, None]] = {}
        self._subscription_count = 0
        # Serialise first-watcher subscribes per event; sharded so nothing grows with ids.
        self._locks = [asyncio.Lock() for _ in range(LOCK_SHARDS)]

    @property
    def subscription_count(self) -> int:
        return self._subscription_count

    def watched_events(self) -> frozenset[int]:
        return frozenset(self._watchers)

    def watchers_of(self, event_id: int) -> int:
        return len(self._watchers.get(event_id, ()))

    async def subscribe(self, subscription: Subscription) -> None:
        """Add a watcher; for an event's first one, wait until the broker subscribed.

        A later watcher waits on the same lock, so it never starts before the
        broker's subscription is active. On failure (or cancellation) the
        watcher is removed again and the broker subscription rolled back.
        """
        event_id = subscription.event_id
        async with self._locks[event_id % LOCK_SHARDS]:
            first = event_id not in self._watchers
            self._watchers.setdefault(event_id, {})[subscription] = None
            self._subscription_count += 1
            if not first:
                return
            try:
                await self._broker.subscribe(event_id)
            except BaseException:
                self.unsubscribe(subscription)
                raise

    def unsubscribe(self, subscription: Subscription) -> None:
        """Remove a watcher (again is fine); the event's last one drops the broker subscription.

        Never awaits, so the hub and the broker agree at every await point.
        """
        watchers = self._watchers.get(subscription.event_id)
        if watchers is None or subscription not in watchers:
            return
        del watchers[subscription]
        self._subscription_count -= 1
        if not watchers:
            del self._watchers[subscription.event_id]
            self._broker.unsubscribe(subscription.event_id)

    def handle_publication(self, publication: Publication) -> None:
        watchers = self._watchers.get(publication.event_id)
        if watchers is None:
            return
        # The hot loop of every replica: `Subscription.deliver`, inlined.
        seq = publication.seq
        for subscription in watchers:
            if subscription.pending is not None:
                subscription.hold(publication, self._hold_limit_bytes)
            elif seq > subscription.last_seq:
                subscription.last_seq = seq
                subscription.writer.offer(publication)
        self._flusher.fanned_out(publication)

    def recovery_floor(self, event_id: int) -> int | None:
        known = [s.last_seq for s in self._watchers.get(event_id, ()) if s.last_seq != UNKNOWN_SEQ]
        return min(known, default=None)
