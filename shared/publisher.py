"""The publisher every booking backend can use (contract section 4).

One Lua script appends the payload to the event's history stream with entry id
`<seq>-0`, records the event's latest state and publishes on the channel, all
in one atomic step. A `seq` at or below the recorded state is a duplicate: the
script publishes nothing and returns 0, so retrying a publish is always safe.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis.asyncio.cluster import RedisCluster

from shared.channels import event_channel, history_key, state_key
from shared.messages import SeatChange
from shared.redis_connect import AnyRedis

# KEYS: history stream, state hash, channel (a key too, so Cluster checks its slot).
# ARGV: seq, payload, availableSeats, history size, history ttl, PUBLISH or SPUBLISH.
PUBLISH_SCRIPT = """
local current = redis.call('HGET', KEYS[2], 'seq')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.pcall('XADD', KEYS[1], 'MAXLEN', ARGV[4], ARGV[1] .. '-0', 'payload', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('HSET', KEYS[2], 'seq', ARGV[1], 'availableSeats', ARGV[3])
redis.call(ARGV[6], KEYS[3], ARGV[2])
return 1
"""

# KEYS: state hash. ARGV: seq, availableSeats. Never moves the state backwards.
RESTORE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], 'seq')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'seq', ARGV[1], 'availableSeats', ARGV[2])
return 1
"""


class Publisher:
    """Publish seat changes of any backend; safe to retry, never publishes twice."""

    def __init__(
        self,
        redis: AnyRedis,
        *,
        history_size: int = 1000,
        history_ttl_seconds: int = 86400,
        sharded: bool = False,
    ) -> None:
        self._redis = redis
        self._history_size = history_size
        self._history_ttl_seconds = history_ttl_seconds
        # Cluster uses sharded pub/sub: the message travels to one shard only.
        self._publish_command = "SPUBLISH" if sharded else "PUBLISH"
        self._publish_script: Any = redis.register_script(PUBLISH_SCRIPT)
        self._restore_script: Any = redis.register_script(RESTORE_SCRIPT)

    async def publish(self, change: SeatChange) -> bool:
        """Publish one change; False when its `seq` was already published."""
        return await self.publish_payload(
            change.event_id, change.seq, change.available_seats, change.payload()
        )

    async def publish_payload(
        self, event_id: int, seq: int, available_seats: int, payload: bytes
    ) -> bool:
        """Publish an already encoded payload; False when `seq` was already published."""
        keys = [history_key(event_id), state_key(event_id), event_channel(event_id)]
        args = [
            seq,
            payload,
            available_seats,
            self._history_size,
            self._history_ttl_seconds,
            self._publish_command,
        ]
        return bool(await self._publish_script(keys=keys, args=args))

    async def publish_many(self, changes: Sequence[SeatChange]) -> list[bool]:
        """Publish changes in the given order, in one round trip where the client allows
        (a pipeline; Redis Cluster publishes one by one); False for each duplicate."""
        if isinstance(self._redis, RedisCluster):
            return [await self.publish(change) for change in changes]
        async with self._redis.pipeline(transaction=False) as pipe:
            for change in changes:
                # Queues the EVALSHA on the pipeline (and registers the script for it).
                await self._publish_script(
                    keys=self._keys(change.event_id),
                    args=self._args(change.seq, change.available_seats, change.payload()),
                    client=pipe,
                )
            return [bool(result) for result in await pipe.execute()]

    def _keys(self, event_id: int) -> list[str]:
        return [history_key(event_id), state_key(event_id), event_channel(event_id)]

    def _args(self, seq: int, available_seats: int, payload: bytes) -> list[Any]:
        return [
            seq,
            payload,
            available_seats,
            self._history_size,
            self._history_ttl_seconds,
            self._publish_command,
        ]

    async def restore_state(self, event_id: int, seq: int, available_seats: int) -> bool:
        """Record an event's state unless Redis already knows a newer one."""
        keys = [state_key(event_id)]
        return bool(await self._restore_script(keys=keys, args=[seq, available_seats]))
