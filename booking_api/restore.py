"""Write events' states back into a Redis that lost them.

A sentinel key marks a Redis that has our states. When it is missing, Redis
is new or was restarted empty: every event's latest published state is
written back from PostgreSQL, then the sentinel is set. Events with rows
still in the outbox are skipped: the relay publishes those rows, and a
restored newer `seq` would make the publish script drop them as duplicates.
"""

from __future__ import annotations

import logging

import asyncpg

from shared.publisher import Publisher
from shared.redis_connect import AnyRedis

logger = logging.getLogger("booking_api.restore")

SENTINEL_KEY = "seatcast:api:alive"

_PUBLISHED_STATES = """
SELECT id, seq, available_seats FROM events e
WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = e.id)
ORDER BY id
"""


class StateRestorer:
    """Keeps Redis holding every event's state: after a restart, and for new events."""

    def __init__(self, pool: asyncpg.Pool, redis: AnyRedis, publisher: Publisher) -> None:
        self._pool = pool
        self._redis = redis
        self._publisher = publisher
        # New events whose initial state Redis has not been given yet: id -> capacity.
        self._new_events: dict[int, int] = {}

    def event_created(self, event_id: int, capacity: int) -> None:
        self._new_events[event_id] = capacity

    async def restore_new_events(self) -> None:
        """Give Redis the states of new events; raises on failure (the caller retries)."""
        while self._new_events:
            event_id, capacity = next(iter(self._new_events.items()))
            await self._publisher.restore_state(event_id, 0, capacity)
            del self._new_events[event_id]

    async def check(self) -> None:
        """Restore every state when Redis lost them; raises on failure (the caller retries)."""
        if not await self._redis.exists(SENTINEL_KEY):
            restored = await self.restore_all()
            await self._redis.set(SENTINEL_KEY, "1")
            logger.info("wrote %d event states to a Redis that had none", restored)

    async def restore_all(self) -> int:
        """Write every event's latest published state; returns how many events."""
        count = 0
        async with self._pool.acquire() as db, db.transaction():
            async for row in db.cursor(_PUBLISHED_STATES, prefetch=500):
                await self._publisher.restore_state(row["id"], row["seq"], row["available_seats"])
                count += 1
        return count
