"""The broker over Redis Cluster with sharded pub/sub: SSUBSCRIBE on the master owning each event.

A message published with SPUBLISH travels to the one shard owning the
channel's slot, so the replica keeps one pub/sub connection per master (a
`_NodeLink`, served by its own task) and subscribes each watched event on the
master owning its slot. Three things move an event to another connection:

- the master's connection fails (restart, failover): every event on it is
  subscribed again once a link to its owner is up, and the gap is read from
  history, exactly as the single-Redis broker does after a reconnect;
- the server drops a subscription by itself with an `sunsubscribe` (Redis 7
  does that when the slot migrates away), or answers SSUBSCRIBE with an error
  (MOVED after a resharding, CLUSTERDOWN while a master is missing): the
  event is put aside, the slot map is read again, and the event subscribed
  on its owner, with the gap filled;
- the slot map changed on a re-read: events whose slot has a new owner move.

Replies on a connection come back in the order the commands went out, so
each link keeps its commands in flight in a queue and matches every reply to
the oldest; an `sunsubscribe` that matches nothing was the server's own.
Ordering, duplicate drops and gap fills are `OrderedBroker`'s, shared with the
single-Redis broker; two links may briefly both deliver an event while it
moves, and the base drops whatever is not newer than what the hub has.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from typing import Any, Final
from urllib.parse import urlsplit

from redis.asyncio.connection import Connection
from redis.exceptions import RedisError, ResponseError

from gateway.fanin.broker import BrokerEventHandler, BrokerUnavailable
from gateway.fanin.cluster_slots import Address, SlotMap, fetch_slot_map
from gateway.fanin.history import History
from gateway.fanin.ordering import OrderedBroker
from gateway.fanout.stats import Stats
from shared.backoff import full_jitter
from shared.channels import event_channel, event_id_of_channel
from shared.logs import redact

SSUBSCRIBE: Final = "SSUBSCRIBE"
SUNSUBSCRIBE: Final = "SUNSUBSCRIBE"
PING: Final = "PING"
# A link that lived this long counts as healthy: the next failure starts backoff afresh.
HEALTHY_LINK_SECONDS: Final = 2.0
# Slot map reads are at least this far apart, whatever keeps asking for them.
MIN_REFRESH_SECONDS: Final = 0.2
TOPOLOGY_TIMEOUT_SECONDS: Final = 2.0

logger = logging.getLogger(__name__)

Command = tuple[str, int | None]


class _NodeLink:
    """One master's sharded pub/sub connection, and what was asked of it."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        # Commands for the sender task: (SSUBSCRIBE|SUNSUBSCRIBE, event) or (PING, None).
        self.outbox: asyncio.Queue[Command] = asyncio.Queue()
        # The same commands, oldest first, until their reply arrives.
        self.in_flight: deque[Command] = deque()
        # Commands in flight per event.
        self.unconfirmed: dict[int, int] = {}
        # Events whose latest command on this link is SSUBSCRIBE.
        self.wanted: set[int] = set()
        # Wanted events the server confirmed, with nothing newer in flight.
        self.confirmed: set[int] = set()
        # Events that were subscribed elsewhere before: read history once confirmed.
        self.needs_fill: set[int] = set()
        # True from a keepalive PING until its PONG.
        self.awaiting_pong = False

    def request(self, command: str, event_id: int | None = None) -> None:
        self.in_flight.append((command, event_id))
        self.outbox.put_nowait((command, event_id))
        if event_id is None:
            return
        self.unconfirmed[event_id] = self.unconfirmed.get(event_id, 0) + 1
        self.confirmed.discard(event_id)
        if command == SSUBSCRIBE:
            self.wanted.add(event_id)
        else:
            self.wanted.discard(event_id)

    def answered(self, command: str, event_id: int | None) -> bool:
        """Take a reply for the oldest command; False when it is not that command's reply."""
        if not self.in_flight or self.in_flight[0] != (command, event_id):
            return False
        self.in_flight.popleft()
        if event_id is not None:
            left = self.unconfirmed.pop(event_id, 1) - 1
            if left > 0:
                self.unconfirmed[event_id] = left
            elif event_id in self.wanted:
                self.confirmed.add(event_id)
        return True

    def failed(self) -> Command | None:
        """Take an error reply: it answers the oldest command, whose event is no longer wanted."""
        if not self.in_flight:
            return None
        command, event_id = self.in_flight[0]
        self.answered(command, event_id)
        if event_id is not None and command == SSUBSCRIBE and event_id not in self.unconfirmed:
            self.lost(event_id)
        return command, event_id

    def lost(self, event_id: int) -> None:
        """The server no longer has the event's subscription here."""
        self.wanted.discard(event_id)
        self.confirmed.discard(event_id)
        self.needs_fill.discard(event_id)


class ClusterBroker(OrderedBroker):
    """Keep one sharded subscription per watched event, on the master owning its slot."""

    def __init__(
        self,
        url: str,
        history: History,
        stats: Stats,
        *,
        subscribe_timeout: float = 5.0,
        keepalive_interval: float = 5.0,
        history_timeout: float = 5.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 2.0,
    ) -> None:
        super().__init__(
            history, stats, subscribe_timeout=subscribe_timeout, history_timeout=history_timeout
        )
        parts = urlsplit(url)
        self._seed: Address = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self._username = parts.username or None
        self._password = parts.password
        self._keepalive_interval = keepalive_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # The latest slot map; None until the first read.
        self._slots: SlotMap | None = None
        # Set when the slot map should be read again.
        self._refresh = asyncio.Event()
        # Desired events set aside after the server refused or dropped them; placed on refresh.
        self._stray: set[int] = set()
        # event id -> the master it is subscribed (or to be subscribed) on.
        self._route: dict[int, Address] = {}
        # master -> its live link; absent while connecting or disconnected.
        self._links: dict[Address, _NodeLink] = {}
        # master -> the task serving its link; one per master that owns slots or events.
        self._node_tasks: dict[Address, asyncio.Task[None]] = {}
        # Masters that had a link before, to count reconnects.
        self._linked_before: set[Address] = set()
        # The task group of `run`; None when not running.
        self._tasks: asyncio.TaskGroup | None = None

    @property
    def connected(self) -> bool:
        """True while every master owning slots has a live link."""
        slots = self._slots
        return slots is not None and all(a in self._links for a in slots.primaries())

    async def subscribe(self, event_id: int) -> None:
        self._desired.add(event_id)
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                while not self._settled(event_id):
                    self._place(event_id)
                    await asyncio.shield(self._waiter(event_id))
        except TimeoutError:
            raise BrokerUnavailable(
                f"Redis Cluster did not confirm the subscription to event {event_id}"
            ) from None

    def unsubscribe(self, event_id: int) -> None:
        self._unwant(event_id)
        self._stray.discard(event_id)
        address = self._route.pop(event_id, None)
        link = self._links.get(address) if address is not None else None
        if link is not None and event_id in link.wanted:
            link.request(SUNSUBSCRIBE, event_id)

    async def close(self) -> None:
        """Nothing outlives `run`: each link closes its connection when its task ends."""

    def _settled(self, event_id: int) -> bool:
        address = self._route.get(event_id)
        link = self._links.get(address) if address is not None else None
        return link is not None and event_id in link.confirmed

    def _place(self, event_id: int) -> None:
        """Ask the master owning the event's slot for it, unless that is under way."""
        owner = self._owner(event_id)
        if owner is None or event_id in self._stray:
            return
        previous = self._route.get(event_id)
        if previous is not None and previous != owner:
            old_link = self._links.get(previous)
            if old_link is not None and event_id in old_link.wanted:
                old_link.request(SUNSUBSCRIBE, event_id)
        self._route[event_id] = owner
        self._serve(owner)
        link = self._links.get(owner)
        if link is None or event_id in link.wanted:
            return  # a link subscribes every event routed to it when it comes up
        if previous is not None:
            link.needs_fill.add(event_id)
        link.request(SSUBSCRIBE, event_id)

    def _owner(self, event_id: int) -> Address | None:
        return None if self._slots is None else self._slots.owner(event_channel(event_id))

    def _set_aside(self, event_id: int) -> None:
        """The event's subscription is gone or refused: place it again after a slot map read."""
        if event_id in self._desired:
            self._stray.add(event_id)
            self._refresh.set()

    async def run(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                self._refresh.set()
                tasks.create_task(self._keep_slot_map(), name="cluster-slot-map")
        finally:
            self._tasks = None
            self._node_tasks.clear()

    async def _keep_slot_map(self) -> None:
        """Read the slot map whenever asked (at most every MIN_REFRESH_SECONDS), retrying."""
        attempt = 0
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            try:
                slots = await fetch_slot_map(
                    self._seeds(),
                    username=self._username,
                    password=self._password,
                    timeout=TOPOLOGY_TIMEOUT_SECONDS,
                )
            except (RedisError, OSError, TimeoutError) as error:
                logger.warning("cannot read the cluster slot map", extra={"error": _text(error)})
            except Exception:
                logger.exception("unexpected cluster slot map")
            else:
                attempt = 0
                self._apply(slots)
                await asyncio.sleep(MIN_REFRESH_SECONDS)
                continue
            self._refresh.set()
            attempt += 1
            await asyncio.sleep(full_jitter(attempt, self._backoff_base, self._backoff_cap))

    def _seeds(self) -> list[Address]:
        known = sorted(self._slots.primaries()) if self._slots is not None else []
        return [self._seed, *(a for a in known if a != self._seed)]

    def _apply(self, slots: SlotMap) -> None:
        """Adopt a slot map: a link per master, every event on its owner."""
        if slots != self._slots:
            logger.info("cluster slot map", extra={"masters": len(slots.primaries())})
        self._slots = slots
        for address in slots.primaries():
            self._serve(address)
        self._stray.clear()
        for event_id in sorted(self._desired):
            self._place(event_id)
        self._wake(self._desired)
        routed = set(self._route.values())
        for address in list(self._node_tasks):
            if address not in slots.primaries() and address not in routed:
                self._node_tasks.pop(address).cancel()

    def _serve(self, address: Address) -> None:
        """Make sure a task keeps a link to this master."""
        task = self._node_tasks.get(address)
        if (task is None or task.done()) and self._tasks is not None:
            self._node_tasks[address] = self._tasks.create_task(
                self._serve_node(address), name=f"cluster-link-{address[0]}:{address[1]}"
            )

    async def _serve_node(self, address: Address) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._serve_link(address)
            except* (RedisError, OSError) as group:
                logger.warning(
                    "redis cluster pub/sub link lost",
                    extra={"node": f"{address[0]}:{address[1]}", "error": _describe(group)},
                )
            except* Exception:
                logger.exception("redis cluster pub/sub link failed")
            # Its slots may have a new master now (failover).
            self._refresh.set()
            attempt = 0 if time.monotonic() - started > HEALTHY_LINK_SECONDS else attempt + 1
            await asyncio.sleep(full_jitter(attempt, self._backoff_base, self._backoff_cap))

    async def _serve_link(self, address: Address) -> None:
        connection = Connection(
            host=address[0],
            port=address[1],
            username=self._username,
            password=self._password,
            protocol=2,
            socket_connect_timeout=2.0,
            socket_keepalive=True,
        )
        events: list[int] = []
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            link = _NodeLink(connection)
            events = sorted(e for e, a in self._route.items() if a == address)
            for event_id in events:
                link.needs_fill.add(event_id)
                link.request(SSUBSCRIBE, event_id)
            self._links[address] = link
            if address in self._linked_before:
                self._stats.redis_reconnects += 1
            self._linked_before.add(address)
            logger.info(
                "redis cluster pub/sub link up",
                extra={"node": f"{address[0]}:{address[1]}", "events": len(events)},
            )
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._read(link))
                tasks.create_task(self._send(link))
                tasks.create_task(self._keepalive(link))
        finally:
            self._links.pop(address, None)
            self._wake(e for e, a in self._route.items() if a == address)
            await connection.disconnect(nowait=True)

    async def _send(self, link: _NodeLink) -> None:
        while True:
            command, event_id = await link.outbox.get()
            args = () if event_id is None else (event_channel(event_id),)
            await link.connection.send_command(command, *args, check_health=False)

    async def _keepalive(self, link: _NodeLink) -> None:
        while True:
            await asyncio.sleep(self._keepalive_interval)
            if link.awaiting_pong:
                raise ConnectionError("Redis did not answer PING")
            link.awaiting_pong = True
            link.request(PING)

    async def _read(self, link: _NodeLink) -> None:
        while True:
            try:
                reply = await link.connection.read_response(
                    timeout=math.inf, disconnect_on_error=False
                )
            except ResponseError as error:
                self._on_error(link, error)
                continue
            if isinstance(reply, list) and reply:
                await self._on_reply(link, reply)
            elif reply == b"PONG":
                link.answered(PING, None)
                link.awaiting_pong = False

    def _on_error(self, link: _NodeLink, error: ResponseError) -> None:
        """An error reply (MOVED, CLUSTERDOWN, …) answers the oldest command in flight."""
        command, event_id = link.failed() or (PING, None)
        if event_id is None:
            raise error  # nothing of ours to retry: drop the link
        logger.warning(
            "redis cluster refused a command",
            extra={"command": command, "eventId": event_id, "error": _text(error)},
        )
        if command == SSUBSCRIBE:
            self._set_aside(event_id)

    async def _on_reply(self, link: _NodeLink, reply: list[Any]) -> None:
        kind = reply[0]
        if kind == b"smessage":
            late = self._receive(reply[1], reply[2])
            if late is not None:
                await self._hand_on_after_gap(late)
        elif kind in (b"ssubscribe", b"sunsubscribe"):
            event_id = event_id_of_channel(reply[1])
            command = SSUBSCRIBE if kind == b"ssubscribe" else SUNSUBSCRIBE
            if link.answered(command, event_id):
                if event_id in link.confirmed:
                    if event_id in link.needs_fill:
                        link.needs_fill.discard(event_id)
                        await self._fill_after_reconnect(event_id)
                    self._wake([event_id])
            elif kind == b"sunsubscribe":
                # Not ours: the server dropped it, e.g. its slot migrated to another master.
                link.lost(event_id)
                self._set_aside(event_id)
        elif kind == b"pong":
            link.answered(PING, None)
            link.awaiting_pong = False


def _text(error: BaseException) -> str:
    return redact(f"{type(error).__name__}: {error}")


def _describe(group: BaseExceptionGroup[Any]) -> str:
    return "; ".join(_text(e) for e in group.exceptions)
