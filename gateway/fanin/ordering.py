"""What the Redis brokers share: the wanted events, subscribe waiters, and gap-free hand-on.

A broker variant (`redis_broker` for one Redis, `cluster_broker` for Redis
Cluster) owns its connections and tells this base two things: a message
arrived on an event's channel (`_receive`), and a subscription was
(re-)established after the link or the shard changed (`_fill_after_reconnect`).
Everything else, ordering per event, dropping duplicates, reading a `seq` gap
from history, is here, once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from gateway.fanin.broker import BrokerEventHandler
from gateway.fanin.history import History
from gateway.fanout.publication import Publication, parse_publication
from gateway.fanout.stats import Stats
from shared.channels import event_channel, event_id_of_channel

logger = logging.getLogger(__name__)


class OrderedBroker:
    """Wanted events, waiters, and ordered, gap-filled delivery to the hub."""

    def __init__(
        self,
        history: History,
        stats: Stats,
        *,
        subscribe_timeout: float,
        history_timeout: float,
    ) -> None:
        self._history = history
        self._stats = stats
        self._subscribe_timeout = subscribe_timeout
        self._history_timeout = history_timeout
        # The events the hub wants; the links' subscriptions converge to this set.
        self._desired: set[int] = set()
        # The highest seq handed to the hub per desired event; absent until the first.
        self._last_seq: dict[int, int] = {}
        # Channel name -> event id, for desired events that had a message: a dict lookup
        # instead of parsing the name, once per message.
        self._channel_events: dict[bytes, int] = {}
        # One future per event a subscriber waits on; woken on confirmation or link change.
        self._waiters: dict[int, asyncio.Future[None]] = {}
        # The hub, set by `run`; None before.
        self._handler: BrokerEventHandler | None = None

    def subscribed_events(self) -> frozenset[int]:
        return frozenset(self._desired)

    def _unwant(self, event_id: int) -> None:
        """The hub no longer watches `event_id`: forget what was known of it."""
        self._desired.discard(event_id)
        self._last_seq.pop(event_id, None)
        self._channel_events.pop(event_channel(event_id).encode(), None)

    def _waiter(self, event_id: int) -> asyncio.Future[None]:
        waiter = self._waiters.get(event_id)
        if waiter is None or waiter.done():
            waiter = self._waiters[event_id] = asyncio.get_running_loop().create_future()
        return waiter

    def _wake(self, event_ids: Iterable[int]) -> None:
        for event_id in list(event_ids):
            waiter = self._waiters.pop(event_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _receive(self, channel: bytes, data: bytes) -> Publication | None:
        """Hand on a message at once, in seq order; after a seq gap, return it instead.

        The common case awaits nothing: no coroutine per message. A returned
        publication must go through `_hand_on_after_gap` before the next message.
        """
        event_id = self._channel_events.get(channel)
        if event_id is None:
            event_id = event_id_of_channel(channel)
            if event_id not in self._desired:
                return None
            self._channel_events[channel] = event_id
        publication = parse_publication(data)
        if publication is None or publication.event_id != event_id:
            logger.warning("ignoring a malformed publication", extra={"eventId": event_id})
            return None
        self._stats.messages_in += 1
        seq = publication.seq
        last = self._last_seq.get(event_id)
        if last is not None and seq <= last:
            return None
        reference = last if last is not None else self._floor(event_id)
        if reference is not None and seq > reference + 1:
            return publication
        # `_hand_on`, inlined: what it checks was checked above.
        self._last_seq[event_id] = seq
        assert self._handler is not None
        self._handler.handle_publication(publication)
        return None

    async def _hand_on_after_gap(self, publication: Publication) -> None:
        """Read the seqs missing before `publication` from history, then hand it on."""
        event_id = publication.event_id
        last = self._last_seq.get(event_id)
        reference = last if last is not None else self._floor(event_id)
        if reference is not None and publication.seq > reference + 1:
            await self._fill(event_id, reference + 1, publication.seq - 1)
        self._hand_on(publication)

    async def _fill_after_reconnect(self, event_id: int) -> None:
        last = self._last_seq.get(event_id)
        reference = last if last is not None else self._floor(event_id)
        if reference is not None:
            await self._fill(event_id, reference + 1, None)

    async def _fill(self, event_id: int, first: int, last: int | None) -> None:
        """Hand on the history entries `first..last` (to the end when None) the hub lacks."""
        async with asyncio.timeout(self._history_timeout):
            publications = await self._history.read(event_id, first, last)
        oldest = publications[0].seq if publications else None
        # After a reconnect (`last` None) an empty read only means nothing was missed.
        if (oldest is None and last is not None) or (oldest is not None and oldest > first):
            # More changes than HISTORY_SIZE since the link was lost: these watchers
            # miss `first` to `oldest - 1`, and the contract has no way to tell them.
            logger.warning(
                "history no longer holds a gap",
                extra={"eventId": event_id, "first": first, "last": last, "oldest": oldest},
            )
        for publication in publications:
            if self._hand_on(publication):
                self._stats.gaps_filled += 1

    def _hand_on(self, publication: Publication) -> bool:
        """Give the hub a publication newer than what it has; False when skipped."""
        event_id = publication.event_id
        if event_id not in self._desired:
            return False
        last = self._last_seq.get(event_id)
        if last is not None and publication.seq <= last:
            return False
        self._last_seq[event_id] = publication.seq
        assert self._handler is not None
        self._handler.handle_publication(publication)
        return True

    def _floor(self, event_id: int) -> int | None:
        assert self._handler is not None
        return self._handler.recovery_floor(event_id)
