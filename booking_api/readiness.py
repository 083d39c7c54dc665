"""Whether this replica can serve: PostgreSQL and Redis both answer, quickly."""

from __future__ import annotations

import asyncio

import asyncpg
from redis.exceptions import RedisClusterException, RedisError

from shared.redis_connect import AnyRedis

CHECK_TIMEOUT_SECONDS = 1.0


async def not_ready_reason(pool: asyncpg.Pool, redis: AnyRedis) -> str | None:
    """None when both answer within a second; otherwise what does not."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await pool.fetchval("SELECT 1")
    except (
        OSError,
        TimeoutError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
        asyncpg.InternalClientError,
    ):
        return "PostgreSQL does not answer"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await redis.ping()
    except (OSError, TimeoutError, RedisError, RedisClusterException):
        return "Redis does not answer"
    return None
