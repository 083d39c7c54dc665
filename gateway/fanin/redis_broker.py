"""The broker over one Redis pub/sub connection per replica (plain Redis, not Cluster).

One task owns the connection for its lifetime (a `_Link`). redis-py
connects it, then a `ReplyStream` takes its socket over: replies are
handled in `data_received` as they arrive, commands (SUBSCRIBE, UNSUBSCRIBE,
the keepalive PING) are written at once. A message is handed to the hub in
that same callback, unless a seq gap or a re-subscription needs history:
then the link's catch-up task reads it, and the replies arriving meanwhile
wait behind it in order, so order per event holds even across gap fills.
When the connection fails, `run` reconnects with backoff, subscribes every
watched event again and, as each subscription is confirmed, reads what was
published meanwhile from the event's history.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from functools import partial
from typing import Any, Final

from redis.asyncio import ConnectionPool
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import RedisError

from gateway.fanin.broker import BrokerEventHandler, BrokerUnavailable
from gateway.fanin.history import History
from gateway.fanin.ordering import OrderedBroker
from gateway.fanin.reply_stream import ReplyStream
from gateway.fanout.stats import Stats
from shared.aio import raise_if_cancelling
from shared.backoff import full_jitter
from shared.channels import event_channel, event_id_of_channel
from shared.logs import redact

SUBSCRIBE: Final = "SUBSCRIBE"
UNSUBSCRIBE: Final = "UNSUBSCRIBE"
# Channels per SUBSCRIBE when re-subscribing everything after a reconnect.
RESUBSCRIBE_BATCH: Final = 500
# A link that lived this long counts as healthy: the next failure starts backoff afresh.
HEALTHY_LINK_SECONDS: Final = 2.0

logger = logging.getLogger(__name__)

# Work a reply leaves for the catch-up task: made into a coroutine only when it runs.
Step = Callable[[], Coroutine[Any, Any, None]]


class _Link:
    """One pub/sub connection's lifetime, and what was asked of it."""

    def __init__(self) -> None:
        # Set by `RedisBroker._serve_link` once redis-py has connected.
        self.stream: ReplyStream | None = None
        # Events whose latest command on this link is SUBSCRIBE.
        self.wanted: set[int] = set()
        # Commands sent per event whose confirmation has not arrived.
        self.unconfirmed: dict[int, int] = {}
        # Events Redis has confirmed, with nothing newer outstanding.
        self.confirmed: set[int] = set()
        # Events re-subscribed after a reconnect: read history once confirmed.
        self.needs_fill: set[int] = set()
        # True from a keepalive PING until any reply arrives.
        self.awaiting_pong = False
        # Replies that arrived while an earlier one awaits history, oldest first.
        self.backlog: deque[Any] = deque()
        # The task awaiting history for a reply, then working off `backlog`; None when idle.
        self.catching_up: asyncio.Task[None] | None = None

    def request(self, command: str, events: Iterable[int]) -> None:
        batch = tuple(events)
        if not batch:
            return
        for event_id in batch:
            self.unconfirmed[event_id] = self.unconfirmed.get(event_id, 0) + 1
            self.confirmed.discard(event_id)
            if command == SUBSCRIBE:
                self.wanted.add(event_id)
            else:
                self.wanted.discard(event_id)
        assert self.stream is not None
        self.stream.send(command, *(event_channel(e) for e in batch))

    def confirm(self, event_id: int) -> bool:
        """Count one confirmation; True when the event is now subscribed and settled."""
        left = self.unconfirmed.get(event_id, 0) - 1
        if left > 0:
            self.unconfirmed[event_id] = left
            return False
        self.unconfirmed.pop(event_id, None)
        if event_id in self.wanted:
            self.confirmed.add(event_id)
            return True
        return False

    async def close(self) -> None:
        """Stop catching up and drop the connection."""
        task = self.catching_up
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        if self.stream is not None:
            self.stream.close()


class RedisBroker(OrderedBroker):
    """Keep one Redis subscription per watched event and feed publications to the hub."""

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
        # RESP2: pub/sub messages arrive as plain replies rather than RESP3 pushes.
        self._pool = ConnectionPool.from_url(
            url, protocol=2, socket_connect_timeout=2.0, socket_keepalive=True
        )
        self._keepalive_interval = keepalive_interval
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        # The live link; None while disconnected.
        self._link: _Link | None = None

    @property
    def connected(self) -> bool:
        return self._link is not None

    async def subscribe(self, event_id: int) -> None:
        self._desired.add(event_id)
        try:
            async with asyncio.timeout(self._subscribe_timeout):
                while not self._settled(event_id):
                    link = self._link
                    if link is not None and event_id not in link.wanted:
                        link.request(SUBSCRIBE, [event_id])
                    await asyncio.shield(self._waiter(event_id))
        except TimeoutError:
            raise BrokerUnavailable(
                f"Redis did not confirm the subscription to event {event_id}"
            ) from None

    def unsubscribe(self, event_id: int) -> None:
        self._unwant(event_id)
        link = self._link
        if link is not None and event_id in link.wanted:
            link.request(UNSUBSCRIBE, [event_id])

    async def close(self) -> None:
        await self._pool.disconnect()

    def _settled(self, event_id: int) -> bool:
        link = self._link
        return link is not None and event_id in link.confirmed

    async def run(self, handler: BrokerEventHandler) -> None:
        self._handler = handler
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                await self._serve_link()
            except* (RedisError, OSError) as group:
                logger.warning("redis pub/sub link lost", extra={"error": _describe(group)})
            except* Exception:
                logger.exception("redis pub/sub link failed")
            raise_if_cancelling()
            attempt = 0 if time.monotonic() - started > HEALTHY_LINK_SECONDS else attempt + 1
            await asyncio.sleep(full_jitter(attempt, self._backoff_base, self._backoff_cap))

    async def _serve_link(self) -> None:
        connection: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
        link = _Link()
        try:
            await connection.connect()  # type: ignore[no-untyped-call]
            link.stream = ReplyStream.take_over(
                connection, partial(self._on_reply, link), self._input_arrived
            )
            reconnect = bool(self._desired)
            link.needs_fill.update(self._desired)
            for batch in _batches(sorted(self._desired), RESUBSCRIBE_BATCH):
                link.request(SUBSCRIBE, batch)
            self._link = link
            if reconnect:
                self._stats.redis_reconnects += 1
            logger.info("redis pub/sub link up", extra={"events": len(self._desired)})
            await _until_one_fails(_until_failed(link.stream), self._keepalive(link))
        finally:
            self._link = None
            self._wake(self._waiters)
            await link.close()
            await connection.disconnect(nowait=True)

    async def _keepalive(self, link: _Link) -> None:
        assert link.stream is not None
        while True:
            await asyncio.sleep(self._keepalive_interval)
            if link.awaiting_pong:
                raise ConnectionError("Redis did not answer PING")
            link.awaiting_pong = True
            link.stream.send("PING")

    def _input_arrived(self) -> None:
        assert self._handler is not None
        self._handler.input_arrived()

    def _on_reply(self, link: _Link, reply: Any) -> None:
        """Every reply, in order, as it arrives (`ReplyStream.data_received` calls this)."""
        # Any reply proves the link alive: during a burst the PONG queues behind
        # hundreds of messages not handled yet.
        link.awaiting_pong = False
        if link.catching_up is not None:
            link.backlog.append(reply)
            return
        step = self._handle(link, reply)
        if step is not None:
            link.catching_up = asyncio.create_task(self._catch_up(link, step))

    def _handle(self, link: _Link, reply: Any) -> Step | None:
        """Act on one reply at once; what needs history comes back as a step to await."""
        if not isinstance(reply, list) or not reply:
            return None  # PONG outside pub/sub mode: liveness only
        kind = reply[0]
        if kind == b"message":
            # The hot path, with no coroutine of its own unless a gap needs history.
            late = self._receive(reply[1], reply[2])
            return None if late is None else partial(self._hand_on_after_gap, late)
        if kind in (b"subscribe", b"unsubscribe"):
            event_id = event_id_of_channel(reply[1])
            if link.confirm(event_id):
                if event_id in link.needs_fill:
                    link.needs_fill.discard(event_id)
                    return partial(self._fill_then_wake, event_id)
                self._wake([event_id])
        return None

    async def _fill_then_wake(self, event_id: int) -> None:
        await self._fill_after_reconnect(event_id)
        self._wake([event_id])

    async def _catch_up(self, link: _Link, step: Step) -> None:
        """Await `step`, then handle the replies that queued meanwhile, in order."""
        try:
            await step()
            raise_if_cancelling()  # a history read may have swallowed it (redis-py's wait_for)
            while link.backlog:
                following = self._handle(link, link.backlog.popleft())
                if following is not None:
                    await following()
                    raise_if_cancelling()
        except Exception as error:
            # History failed: end the link; the reconnect fills the gap from history again.
            assert link.stream is not None
            link.stream.fail(error)
        finally:
            link.catching_up = None


async def _until_failed(stream: ReplyStream) -> None:
    raise await stream.failed


async def _until_one_fails(*steps: Coroutine[Any, Any, None]) -> None:
    """Run `steps` until one ends; cancel the others and raise what the first one raised.

    Not a TaskGroup: on Python 3.11 a task group whose child fails leaves its
    parent's cancellation count raised (fixed in 3.12), and `run` then took the
    lost link for its own cancellation and stopped for good: no reconnect, every
    later subscribe timed out.
    """
    tasks = [asyncio.create_task(step) for step in steps]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    raise ConnectionError("the pub/sub link ended")


def _batches(items: list[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _describe(group: BaseExceptionGroup[Any]) -> str:
    return redact("; ".join(f"{type(e).__name__}: {e}" for e in group.exceptions))
