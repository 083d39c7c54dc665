"""The outbox relay: publishes committed seat changes to Redis, once, in `seq` order.

Handlers only `kick` the relay after a commit, so Redis being slow or down
never fails or delays a booking. For each kicked event the relay locks the
event's outbox rows (`FOR UPDATE`, which also serialises relays of several
API replicas), publishes them in `seq` order through the publish script and
deletes them in the same transaction. A sweep every second picks up whatever
is left, e.g. after a crash between commit and publish; while Redis fails the
relay backs off up to five seconds. Publishing twice is harmless: the script
drops a `seq` Redis already has.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from redis.exceptions import RedisClusterException, RedisError

from booking_api.metrics import ApiMetrics
from booking_api.restore import StateRestorer
from shared.aio import raise_if_cancelling
from shared.messages import SeatChange, iso
from shared.publisher import Publisher

logger = logging.getLogger("booking_api.relay")

SWEEP_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 5.0
BATCH_ROWS = 500

# What a failed round of publishing may raise; anything else is a bug and is logged as one.
TRANSIENT_ERRORS = (
    RedisError,
    # Redis Cluster's client raises this (not a RedisError) when no node or slot answers.
    RedisClusterException,
    OSError,
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # A connection the server cut mid-query (asyncpg#1069).
    asyncpg.InternalClientError,
)

_PENDING = """
SELECT seq, type, booking_id, user_id, seats, available_seats, occurred_at
FROM outbox WHERE event_id = $1 ORDER BY seq LIMIT $2 FOR UPDATE
"""


class Relay:
    """One task per app publishing the outbox; `kick(event_id)` after each commit."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        publisher: Publisher,
        restorer: StateRestorer,
        metrics: ApiMetrics,
        *,
        sweep_seconds: float = SWEEP_SECONDS,
        max_backoff_seconds: float = MAX_BACKOFF_SECONDS,
    ) -> None:
        self._pool = pool
        self._publisher = publisher
        self._restorer = restorer
        self._metrics = metrics
        self._sweep_seconds = sweep_seconds
        self._max_backoff_seconds = max_backoff_seconds
        # Events with changes committed by this replica and not yet published by it.
        self._dirty: set[int] = set()
        # Set by `kick`; cleared when the relay starts a round.
        self._wake = asyncio.Event()

    def kick(self, event_id: int) -> None:
        """Publish the event's new outbox rows soon; never blocks."""
        self._dirty.add(event_id)
        self._wake.set()

    def event_created(self, event_id: int, capacity: int) -> None:
        """Give Redis the new event's state (seq 0) soon, so watchers see it at once."""
        self._restorer.event_created(event_id, capacity)
        self._wake.set()

    async def run(self) -> None:
        """Publish until cancelled."""
        backoff = 0.0
        next_sweep = 0.0
        while True:
            self._wake.clear()
            try:
                await self._restorer.restore_new_events()
                if time.monotonic() >= next_sweep:
                    await self._restorer.check()
                    await self._sweep()
                    next_sweep = time.monotonic() + self._sweep_seconds
                await self._publish_dirty()
                backoff = 0.0
            except TRANSIENT_ERRORS as error:
                raise_if_cancelling()
                self._metrics.publish_failures.inc()
                backoff = min(max(2 * backoff, 0.25), self._max_backoff_seconds)
                logger.warning("relay round failed, retrying in %.2fs: %r", backoff, error)
                await asyncio.sleep(backoff)
                next_sweep = 0.0
                continue
            raise_if_cancelling()
            await self._wait(next_sweep - time.monotonic())

    async def _wait(self, seconds: float) -> None:
        if seconds <= 0:
            return
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _sweep(self) -> None:
        """Find every event with unpublished rows, whoever committed them."""
        rows = await self._pool.fetch(
            "SELECT event_id, count(*) AS n FROM outbox GROUP BY event_id"
        )
        self._metrics.outbox_backlog.set(sum(r["n"] for r in rows))
        self._dirty.update(r["event_id"] for r in rows)

    async def _publish_dirty(self) -> None:
        while self._dirty:
            event_id = self._dirty.pop()
            try:
                if await self.publish_event(event_id) == BATCH_ROWS:
                    self._dirty.add(event_id)
            except BaseException:
                self._dirty.add(event_id)
                raise

    async def publish_event(self, event_id: int) -> int:
        """Publish up to `BATCH_ROWS` of the event's outbox rows in order; returns how many.

        The rows go to Redis in one pipeline and are deleted only when all of
        it succeeded; after a failure they are published again, and the
        publish script drops the ones Redis already has.
        """
        async with self._pool.acquire() as db, db.transaction():
            rows = await db.fetch(_PENDING, event_id, BATCH_ROWS)
            if not rows:
                return 0
            await self._publisher.publish_many([_change(event_id, row) for row in rows])
            await db.execute(
                "DELETE FROM outbox WHERE event_id = $1 AND seq <= $2", event_id, rows[-1]["seq"]
            )
        self._metrics.published.inc(len(rows))
        return len(rows)


def _change(event_id: int, row: asyncpg.Record) -> SeatChange:
    return SeatChange(
        type=row["type"],
        event_id=event_id,
        booking_id=row["booking_id"],
        user_id=row["user_id"],
        seats=row["seats"],
        available_seats=row["available_seats"],
        seq=row["seq"],
        timestamp=iso(row["occurred_at"]),
    )
