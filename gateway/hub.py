"""Which local sessions watch which event, and the fan-out to them.

The hub asks the broker for an event when its first watcher arrives and drops
it when the last one leaves, so the broker's subscriptions always equal the
set of watched events. Fan-out never awaits: it hands the same `Publication`
to each watcher, skipping what a watcher already has; the flusher writes what
the writers gathered at the end of the loop turn.

A watcher in the steady state (live, its writer open and holding nothing
for this turn) is attached: its entry in the event's `Watchers` holds its
connection's transport, and the hub writes the frame to it itself. With a
thousand watchers the fan-out is bound by memory, not by instructions:
between two messages the load client and Redis evict the caches, and every
object touched per watcher is a miss. The direct path reads the dict entry
and the transport, as a bare `write()` loop does; the subscription, the
writer, its buffers and the protocol stay cold (issue 4's paced profile).
"""

from __future__ import annotations

import asyncio
from typing import Final

from gateway.broker import Broker
from gateway.flusher import Flusher
from gateway.metrics import Stats
from gateway.publication import Publication
from gateway.writer import SLOW_CONSUMER, SLOW_CONSUMER_REASON, DirectTransport, Outbound

# `last_seq` of a watcher that does not know its starting point yet.
UNKNOWN_SEQ: Final = -1
LOCK_SHARDS: Final = 64


class Watchers:
    """An event's watchers on this replica, and the transports the hub writes to itself."""

    __slots__ = ("entries", "seq", "turn")

    def __init__(self) -> None:
        # Subscription -> its transport while the hub writes to it directly, else None.
        # The hot loop reads both from the dict's own entries; a value may change while
        # the loop runs (attach, detach), the keys only between fan-outs.
        self.entries: dict[Subscription, DirectTransport | None] = {}
        # The latest seq fanned out: each attached watcher has it and every one before.
        self.seq = UNKNOWN_SEQ
        # The flusher's turn of the latest fan-out: a second one in the same turn is a
        # burst, gathered into one write per watcher.
        self.turn = -1


class Subscription:
    """One session watching one event."""

    __slots__ = ("event_id", "last_seq", "pending", "pending_bytes", "watchers", "writer")

    def __init__(self, event_id: int, writer: Outbound, last_seq: int = UNKNOWN_SEQ) -> None:
        self.event_id = event_id
        self.writer = writer
        # The highest seq this watcher has (delivered, replayed or the state it started
        # from); UNKNOWN_SEQ until a subscribing session has read the event's state.
        # While attached, `watchers.seq` is: this is brought up to date on detaching.
        self.last_seq = last_seq
        # Live publications held back while the session replays history; None once live.
        self.pending: list[Publication] | None = []
        self.pending_bytes = 0
        # The event's watchers in the hub, while subscribed there.
        self.watchers: Watchers | None = None

    @property
    def direct(self) -> DirectTransport | None:
        """The transport the hub writes to itself; None while the writer takes each frame."""
        return None if self.watchers is None else self.watchers.entries.get(self)

    def attach_transport(self, transport: DirectTransport) -> None:
        """Let the hub write to `transport` itself, once this watcher has exactly what was
        fanned out: every later publication is then new to it."""
        watchers = self.watchers
        if (
            watchers is not None
            and self.pending is None
            and self.last_seq == watchers.seq != UNKNOWN_SEQ
            and self in watchers.entries
        ):
            watchers.entries[self] = transport

    def detach_transport(self) -> None:
        """Publications go through the writer again (it gathers, closes or forgets this)."""
        watchers = self.watchers
        if watchers is not None and watchers.entries.get(self) is not None:
            watchers.entries[self] = None
            self.last_seq = max(self.last_seq, watchers.seq)

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
        self.writer.go_direct(self)

    def deliver(self, publication: Publication) -> None:
        if publication.seq > self.last_seq:
            self.last_seq = publication.seq
            self.writer.offer(publication)


class Hub:
    """The watchers of each event on this replica."""

    def __init__(
        self, broker: Broker, hold_limit_bytes: int, flusher: Flusher, stats: Stats
    ) -> None:
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
        subscription.writer.forget(subscription)
        del watchers.entries[subscription]
        subscription.watchers = None
        self._subscription_count -= 1
        if not watchers.entries:
            del self._watchers[subscription.event_id]
            self._broker.unsubscribe(subscription.event_id)

    def handle_publication(self, publication: Publication) -> None:
        watchers = self._watchers.get(publication.event_id)
        if watchers is None:
            return
        turn = self._flusher.turn
        if watchers.turn == turn:
            self._gather(watchers, publication)
        else:
            watchers.turn = turn
            self._write(watchers, publication)
        self._flusher.fanned_out(publication)

    def _write(self, watchers: Watchers, publication: Publication) -> None:
        """The hot loop of every replica: the frame straight to each attached transport.

        An attached watcher costs its dict entry and its transport, as a bare
        `write()` loop does: no subscription, writer or protocol is touched.
        """
        seq, frame = publication.seq, publication.frame
        # Publications come in seq order: every attached watcher lacks this one.
        watchers.seq = seq
        written = 0
        for subscription, transport in watchers.entries.items():
            if transport is None:
                self._offer(subscription, publication)
            elif transport.get_write_buffer_size() or transport.is_closing():
                # A backlog: the writer weighs it against the budget (4008).
                subscription.writer.offer(publication)
            else:
                transport.write(frame)
                written += 1
        self._stats.deliveries += written

    def _offer(self, subscription: Subscription, publication: Publication) -> None:
        """A detached watcher: held, skipped or handed to its writer, then maybe attached."""
        if subscription.pending is not None:
            subscription.hold(publication, self._hold_limit_bytes)
        elif publication.seq > subscription.last_seq:
            subscription.last_seq = publication.seq
            writer = subscription.writer
            writer.offer(publication)
            writer.go_direct(subscription)

    def _gather(self, watchers: Watchers, publication: Publication) -> None:
        """A burst: the event's watchers wrote this turn, so what follows joins one write."""
        seq = publication.seq
        watchers.seq = seq
        for subscription, transport in watchers.entries.items():
            if transport is not None:
                # Gathering detaches it, and brings its `last_seq` up to this one.
                subscription.writer.gather(publication)
            elif subscription.pending is not None:
                subscription.hold(publication, self._hold_limit_bytes)
            elif seq > subscription.last_seq:
                subscription.last_seq = seq
                subscription.writer.gather(publication)

    def input_arrived(self) -> None:
        self._flusher.next_turn()

    def recovery_floor(self, event_id: int) -> int | None:
        watchers = self._watchers.get(event_id)
        if watchers is None:
            return None
        known = [
            watchers.seq if transport is not None else subscription.last_seq
            for subscription, transport in watchers.entries.items()
        ]
        return min((seq for seq in known if seq != UNKNOWN_SEQ), default=None)
