"""The booking API app: middleware, error handlers, and the lifespan that owns every resource.

`create_app(settings)` builds an app with no global state: its lifespan opens
the asyncpg pool and the Redis client (unless a test hands them in), starts
the outbox relay task, and on shutdown stops the task and closes what it opened.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import asyncpg
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from booking_api import auth
from booking_api.errors import (
    ApiError,
    api_error_handler,
    http_error_handler,
    server_error_handler,
)
from booking_api.handlers import UNAVAILABLE_ERRORS, database_unavailable
from booking_api.metrics import ApiMetrics, MetricsMiddleware
from booking_api.relay import Relay
from booking_api.restore import StateRestorer
from booking_api.routes import routes
from booking_api.services import Services
from shared.publisher import Publisher
from shared.redis_connect import AnyRedis, connect, is_cluster_url
from shared.settings import ApiSettings
from shared.tokens import TokenVerifier

logger = logging.getLogger("booking_api")

POOL_MAX_SIZE = 10
QUERY_TIMEOUT_SECONDS = 10.0
REDIS_TIMEOUT_SECONDS = 2.0
CLOSE_TIMEOUT_SECONDS = 5.0
CORS_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key"]


def create_app(
    settings: ApiSettings,
    *,
    pool: asyncpg.Pool | None = None,
    redis: AnyRedis | None = None,
) -> Starlette:
    """The booking API; `pool`/`redis` given by a caller stay the caller's to close."""
    api_metrics = ApiMetrics()
    verifier = auth.CachingVerifier(TokenVerifier(settings.jwt))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            db = pool or await _open_pool(settings.database_url, stack)
            client = redis or _open_redis(settings.redis_url, stack)
            publisher = Publisher(
                client,
                history_size=settings.history_size,
                history_ttl_seconds=settings.history_ttl_seconds,
                sharded=is_cluster_url(settings.redis_url),
            )
            restorer = StateRestorer(db, client, publisher)
            relay = Relay(db, publisher, restorer, api_metrics)
            app.state.services = Services(settings, db, client, verifier, relay, api_metrics)
            relay_task = asyncio.create_task(relay.run(), name="outbox-relay")
            stack.push_async_callback(_stop, relay_task)
            yield

    middleware = [Middleware(MetricsMiddleware, metrics=api_metrics)]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=CORS_HEADERS,
                max_age=600,
            )
        )
    handlers: dict[Any, Any] = {
        ApiError: api_error_handler,
        HTTPException: http_error_handler,
        Exception: server_error_handler,
        **dict.fromkeys(UNAVAILABLE_ERRORS, database_unavailable),
    }
    return Starlette(
        routes=routes(), middleware=middleware, exception_handlers=handlers, lifespan=lifespan
    )


async def _open_pool(url: str, stack: AsyncExitStack) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=POOL_MAX_SIZE,
        command_timeout=QUERY_TIMEOUT_SECONDS,
        reset=_keep_session,
    )
    stack.push_async_callback(_close_pool, pool)
    return pool


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query on release, a round trip per request for nothing:
    no SET, LISTEN, advisory lock or cursor outlives a statement or transaction on
    a pool connection (migrations use their own connection)."""


async def _close_pool(pool: asyncpg.Pool) -> None:
    try:
        await asyncio.wait_for(pool.close(), CLOSE_TIMEOUT_SECONDS)
    except TimeoutError:
        pool.terminate()


def _open_redis(url: str, stack: AsyncExitStack) -> AnyRedis:
    client = connect(url, socket_timeout=REDIS_TIMEOUT_SECONDS)
    stack.push_async_callback(client.aclose)
    return client


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a task and wait for it; our own cancellation still propagates."""
    while not task.done():
        task.cancel()
        await asyncio.wait([task], timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        logger.error("relay stopped with an error", exc_info=task.exception())
