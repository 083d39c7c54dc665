"""One place that turns `REDIS_URL` into a client: single Redis or Cluster."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

CLUSTER_SCHEME = "redis+cluster"

AnyRedis = Redis | RedisCluster


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme == CLUSTER_SCHEME


def connect(url: str, **options: Any) -> AnyRedis:
    """A client for `url`; `redis+cluster://host:port` gives a `RedisCluster`.

    Nothing is sent until the first command, so this never blocks or fails on
    an unreachable server.
    """
    options.setdefault("socket_connect_timeout", 2.0)
    options.setdefault("health_check_interval", 15)
    if is_cluster_url(url):
        parts = urlsplit(url)
        options.pop("health_check_interval")
        return RedisCluster(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            password=parts.password,
            **options,
        )
    return Redis.from_url(url, **options)
