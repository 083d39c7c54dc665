"""The broker interface: how a replica hears about publications.

A broker keeps one subscription per event for the whole replica, whatever the
number of local watchers; the hub tells it when an event's first watcher
arrives and when its last one leaves. Delivery is ordered per event and gap
free as far as the event's history allows: a broker that sees `seq` jump, or
that lost its connection, reads the missing messages from history before it
hands on later ones. `redis_broker` implements it over one Redis pub/sub
connection, `cluster_broker` over Redis Cluster's sharded pub/sub (one
connection per master); `ordering` holds what they share. `memory_broker`
keeps it within one process.
"""

from __future__ import annotations

from typing import Protocol

from gateway.fanout.publication import Publication


class BrokerUnavailable(Exception):
    """The broker could not confirm a subscription in time."""


class BrokerEventHandler(Protocol):
    """What a broker calls back into: the hub."""

    def handle_publication(self, publication: Publication) -> None:
        """Fan a publication out; called in `seq` order per event, never concurrently."""

    def recovery_floor(self, event_id: int) -> int | None:
        """The lowest `seq` a local watcher of the event is known to have; None if unknown."""

    def input_arrived(self) -> None:
        """One read from Redis begins: what it brings is one turn of fan-out (optional)."""


class Broker(Protocol):
    @property
    def connected(self) -> bool:
        """True while the broker's link is up."""

    def subscribed_events(self) -> frozenset[int]:
        """The events the broker is asked to keep a subscription for."""

    async def subscribe(self, event_id: int) -> None:
        """Keep a subscription for the event; return once it is active.

        Raises `BrokerUnavailable` when it could not be confirmed in time; the
        caller then rolls back with `unsubscribe`.
        """

    def unsubscribe(self, event_id: int) -> None:
        """Drop the event's subscription; never waits."""

    async def run(self, handler: BrokerEventHandler) -> None:
        """Deliver publications to `handler` until cancelled, reconnecting as needed."""
