"""A broker inside the process: what is published here reaches this replica's hub.

For tests, and for running the hub without Redis. It keeps the broker's
contract (gateway/fanin/broker.py): one subscription per event, publications
handed on in `seq` order per event, duplicates and older ones dropped. It has
no history, so it never fills gaps: nothing is lost in a process anyway.
"""

from __future__ import annotations

import asyncio

from gateway.fanin.broker import BrokerEventHandler
from gateway.fanout.publication import Publication, parse_publication


class MemoryBroker:
    """Subscriptions as a set; `publish` hands a payload to the hub at once."""

    def __init__(self) -> None:
        self.subscribed: set[int] = set()
        # The highest seq handed on per subscribed event.
        self._last_seq: dict[int, int] = {}
        # The hub, once `run` started; None before.
        self._handler: BrokerEventHandler | None = None
        self.connected = True

    def subscribed_events(self) -> frozenset[int]:
        return frozenset(self.subscribed)

    async def subscribe(self, event_id: int) -> None:
        self.subscribed.add(event_id)

    def unsubscribe(self, event_id: int) -> None:
        self.subscribed.discard(event_id)
        self._last_seq.pop(event_id, None)

    async def run(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        await asyncio.Event().wait()

    def publish(self, payload: bytes) -> bool:
        """Hand `payload` on as one read of input; False when nobody here takes it."""
        publication = parse_publication(payload)
        handler = self._handler
        if publication is None or handler is None:
            return False
        return self.hand_on(publication)

    def hand_on(self, publication: Publication) -> bool:
        assert self._handler is not None, "the broker is not running"
        event_id = publication.event_id
        if event_id not in self.subscribed or publication.seq <= self._last_seq.get(event_id, 0):
            return False
        self._last_seq[event_id] = publication.seq
        self._handler.input_arrived()
        self._handler.handle_publication(publication)
        return True
