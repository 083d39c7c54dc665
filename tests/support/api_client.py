"""Helpers for booking API tests: an in-process app with its lifespan, and Redis listeners.

The in-process app runs the real code (real PostgreSQL, real Redis, the relay
task) behind httpx's ASGI transport, which is much faster than a process per
test; tests of the process itself use the `api`/`service` fixtures instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
import redis.asyncio

from booking_api.__main__ import prepare_database
from booking_api.app import create_app
from shared.channels import event_channel, history_key, state_key
from shared.settings import ApiSettings, api_settings

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!"


def settings_for(database_url: str, redis_url: str, **env: str) -> ApiSettings:
    return api_settings(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "JWT_SECRET": JWT_SECRET, **env}
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def running_app(settings: ApiSettings) -> AsyncIterator[httpx.AsyncClient]:
    """Migrate, run the app's lifespan, and yield a client that calls it in-process."""
    problem = await prepare_database(settings.database_url)
    assert problem is None, problem
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            yield client


async def create_event(
    client: httpx.AsyncClient, admin_token: str, capacity: int, name: str = "Concert"
) -> dict[str, Any]:
    response = await client.post(
        "/api/events", json={"name": name, "capacity": capacity}, headers=bearer(admin_token)
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


class ChannelListener:
    """Collects every message published on one event's channel, from subscribe on."""

    def __init__(self, redis_url: str, event_id: int) -> None:
        self._client = redis.asyncio.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub()
        self._channel = event_channel(event_id)
        # Decoded payloads in arrival order.
        self.messages: list[dict[str, Any]] = []
        # The task reading the subscription; None until `start`.
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> ChannelListener:
        await self._pubsub.subscribe(self._channel)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for message in self._pubsub.listen():
            if message["type"] == "message":
                self.messages.append(orjson.loads(message["data"]))

    def seqs(self) -> list[int]:
        return [m["seq"] for m in self.messages]

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.wait([self._reader])
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        await self._client.aclose()


def history(redis_client: Any, event_id: int) -> list[tuple[bytes, dict[str, Any]]]:
    """The event's history stream as (entry id, decoded payload)."""
    entries = redis_client.xrange(history_key(event_id))
    return [(entry_id, orjson.loads(fields[b"payload"])) for entry_id, fields in entries]


def state(redis_client: Any, event_id: int) -> dict[str, int]:
    raw = redis_client.hgetall(state_key(event_id))
    return {k.decode(): int(v) for k, v in raw.items()}
