"""Write events' states back into a Redis that lost them.

A sentinel key marks a Redis that has our states. When it is missing, Redis
is new or was restarted empty: every event's latest published state is
written back from PostgreSQL, then the sentinel is set. On Redis Cluster each
master can come back empty on its own, so there is one sentinel per master
(a key whose hash tag puts it in a slot that master serves). Events with rows
still in the outbox are skipped: the relay publishes those rows, and a
restored newer `seq` would make the publish script drop them as duplicates.
"""

from __future__ import annotations

import logging

import asyncpg
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException

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
        sentinels = await sentinel_keys(self._redis)
        if not all([await self._redis.exists(key) for key in sentinels]):
            restored = await self.restore_all()
            for key in sentinels:
                await self._redis.set(key, "1")
            logger.info("wrote %d event states to a Redis that had none", restored)

    async def restore_all(self) -> int:
        """Write every event's latest published state; returns how many events."""
        count = 0
        async with self._pool.acquire() as db, db.transaction():
            async for row in db.cursor(_PUBLISHED_STATES, prefetch=500):
                await self._publisher.restore_state(row["id"], row["seq"], row["available_seats"])
                count += 1
        return count


async def sentinel_keys(redis: AnyRedis) -> list[str]:
    """The sentinel, or on Cluster one per master (by the client's current slot map)."""
    if not isinstance(redis, RedisCluster):
        return [SENTINEL_KEY]
    await redis.initialize()
    masters = {node.name for node in redis.get_primaries()}
    keys: dict[str, str] = {}
    for tag in range(16 * 16384):
        key = f"{SENTINEL_KEY}:{{{tag}}}"
        try:
            node = redis.get_node_from_key(key)
        except RedisClusterException:
            continue  # a slot no master serves right now
        if node is not None and node.name in masters:
            keys.setdefault(node.name, key)
            if len(keys) == len(masters):
                break
    return list(keys.values())
