"""Which local sessions watch which event, and the fan-out to them.

The hub asks the broker for an event when its first watcher arrives and drops
it when the last one leaves, so the broker's subscriptions always equal the
set of watched events. Fan-out never awaits: it hands the same `Publication`
to each watcher's `Outbound`, which writes it at once or gathers it for the
turn's end (gateway/fanout/outbound.py).

A watcher that has every publication up to the event's latest fanned-out seq
is in step: its entry in the event's `Watchers` holds its outbound, and the
hub hands it each new publication without looking at the subscription.
With a thousand watchers the fan-out is bound by memory, not instructions
(between two messages the load client and Redis evict the caches), so the
hot loop touches the dict entry, the outbound and its transport only. A
watcher that is replaying, or started from a state read that may be ahead
of the publications still arriving, has None there: its publications are
held or checked against its own `last_seq` until it is in step.
"""

from __future__ import annotations

import asyncio
from typing import Final, Protocol

from gateway.fanout.outbound import Flusher, Outbound
from gateway.fanout.publication import Publication
from gateway.fanout.stats import Stats

# `last_seq` of a watcher that does not know its starting point yet.
UNKNOWN_SEQ: Final = -1
LOCK_SHARDS: Final = 64


class Feed(Protocol):
    """What the hub asks of the fan-in: one subscription per watched event."""

    async def subscribe(self, event_id: int) -> None:
        """Return once publications of the event arrive; raise when that cannot be had."""

    def unsubscribe(self, event_id: int) -> None:
        """The event has no watcher left; never waits."""


class Watchers:
    """An event's watchers on this replica."""

    __slots__ = ("entries", "seq")

    def __init__(self) -> None:
        # Subscription -> its outbound while in step, else None. The hot loop reads both
        # from the dict's own entries; a value may change while it runs, the keys only
        # between fan-outs.
        self.entries: dict[Subscription, Outbound | None] = {}
        # The latest seq fanned out: each watcher in step has it and every one before.
        self.seq = UNKNOWN_SEQ


class Subscription:
    """One session watching one event."""

    __slots__ = ("event_id", "last_seq", "outbound", "pending", "pending_bytes", "watchers")

    def __init__(self, event_id: int, outbound: Outbound, last_seq: int = UNKNOWN_SEQ) -> None:
        self.event_id = event_id
        self.outbound = outbound
        # The highest seq this watcher has (delivered, replayed or the state it started
        # from); UNKNOWN_SEQ until a subscribing session has read the event's state.
        # While in step, `watchers.seq` is (this is not kept up to date then).
        self.last_seq = last_seq
        # Live publications held back while the session replays history; None once live.
        self.pending: list[Publication] | None = []
        self.pending_bytes = 0
        # The event's watchers in the hub, while subscribed there.
        self.watchers: Watchers | None = None

    @property
    def in_step(self) -> bool:
        watchers = self.watchers
        return watchers is not None and watchers.entries.get(self) is not None

    def hold(self, publication: Publication, limit_bytes: int) -> None:
        assert self.pending is not None
        self.pending.append(publication)
        self.pending_bytes += publication.size
        if self.pending_bytes > limit_bytes:
            self.outbound.overflowed()

    def go_live(self) -> None:
        """Send the held publications newer than `last_seq`, then receive live ones."""
        held, self.pending = self.pending or [], None
        for publication in held:
            self.deliver(publication)
        self._step_in()

    def deliver(self, publication: Publication) -> None:
        if publication.seq > self.last_seq:
            self.last_seq = publication.seq
            self.outbound.send(publication)

    def _step_in(self) -> None:
        """In step once this watcher has exactly what was fanned out: all that follows is new."""
        watchers = self.watchers
        if (
            watchers is not None
            and self.pending is None
            and self.last_seq == watchers.seq != UNKNOWN_SEQ
            and self in watchers.entries
        ):
            watchers.entries[self] = self.outbound


class Hub:
    """The watchers of each event on this replica."""

    def __init__(self, broker: Feed, hold_limit_bytes: int, flusher: Flusher, stats: Stats) -> None:
        self._broker = broker
        self._hold_limit_bytes = hold_limit_bytes
        self._flusher = flusher
        self._stats = stats
        self._watchers: dict[int, Watchers] = {}
        self._subscription_count = 0
        # Serialise first-watcher subscribes per event; sharded so nothing grows with ids.
        self._locks = [asyncio.Lock() for _ in range(LOCK_SHARDS)]

    @property
    def subscription_count(self) -> int:
        return self._subscription_count

    def watched_events(self) -> frozenset[int]:
        return frozenset(self._watchers)

    def watchers_of(self, event_id: int) -> int:
        watchers = self._watchers.get(event_id)
        return 0 if watchers is None else len(watchers.entries)

    async def subscribe(self, subscription: Subscription) -> None:
        """Add a watcher; for an event's first one, wait until the broker subscribed.

        A later watcher waits on the same lock, so it never starts before the
        broker's subscription is active. On failure (or cancellation) the
        watcher is removed again and the broker subscription rolled back.
        """
        event_id = subscription.event_id
        async with self._locks[event_id % LOCK_SHARDS]:
            first = event_id not in self._watchers
            watchers = self._watchers.setdefault(event_id, Watchers())
            watchers.entries[subscription] = None
            subscription.watchers = watchers
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
        if watchers is None or subscription not in watchers.entries:
            return
        if watchers.entries.pop(subscription) is not None:
            subscription.last_seq = max(subscription.last_seq, watchers.seq)
        subscription.watchers = None
        self._subscription_count -= 1
        if not watchers.entries:
            del self._watchers[subscription.event_id]
            self._broker.unsubscribe(subscription.event_id)

    def handle_publication(self, publication: Publication) -> None:
        """The hot loop of every replica: the publication to each watcher's outbound."""
        watchers = self._watchers.get(publication.event_id)
        if watchers is None:
            return
        # Publications come in seq order: every watcher in step lacks this one.
        watchers.seq = seq = publication.seq
        entries = watchers.entries
        for subscription, outbound in entries.items():
            if outbound is not None:
                outbound.send(publication)
            elif subscription.pending is not None:
                subscription.hold(publication, self._hold_limit_bytes)
            else:
                subscription.deliver(publication)
                if subscription.last_seq == seq:
                    entries[subscription] = subscription.outbound
        self._flusher.fanned_out(publication)

    def input_arrived(self) -> None:
        self._flusher.next_turn()

    def recovery_floor(self, event_id: int) -> int | None:
        watchers = self._watchers.get(event_id)
        if watchers is None:
            return None
        known = [
            watchers.seq if outbound is not None else subscription.last_seq
            for subscription, outbound in watchers.entries.items()
        ]
        return min((seq for seq in known if seq != UNKNOWN_SEQ), default=None)
