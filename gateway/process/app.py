"""The app factory: HTTP routes plus a lifespan that owns Redis, the broker and the hub.

WebSocket upgrades never reach the ASGI app: uvicorn hands them to
`WebSocketConnection` (gateway/wire/connection.py), which asks the endpoint
the lifespan puts in its state. `create_app(settings)` builds a fresh
`Replica` every time, so one process can host several replicas (tests do).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from gateway.fanin.cluster_broker import ClusterBroker
from gateway.fanin.history import History
from gateway.fanin.redis_broker import RedisBroker
from gateway.fanout.hub import Hub
from gateway.process.replica import Replica, Runtime
from gateway.session.admission import WebSocketEndpoint
from gateway.wire.connection import ENDPOINT_STATE_KEY
from shared.redis_connect import connect, is_cluster_url
from shared.settings import GatewaySettings, gateway_settings
from shared.tokens import TokenVerifier

STATIC_DIR: Final = Path(__file__).resolve().parent.parent / "static"
READY_CHECK_SECONDS: Final = 1.0
BROKER_STOP_SECONDS: Final = 3.0

logger = logging.getLogger(__name__)


def create_app(settings: GatewaySettings) -> Starlette:
    """A gateway replica as an ASGI app; its `Replica` is `app.state.replica`."""
    replica = Replica(settings=settings, verifier=TokenVerifier(settings.jwt))
    app = Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics),
            Route("/", static_file("index.html", "text/html; charset=utf-8")),
            Route("/client.js", static_file("client.js", "text/javascript; charset=utf-8")),
        ],
        lifespan=lifespan,
    )
    app.state.replica = replica
    return app


def app_from_environment() -> Starlette:
    """The factory uvicorn's worker processes call (settings were checked by the parent)."""
    return create_app(gateway_settings(os.environ))


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    replica: Replica = app.state.replica
    settings = replica.settings
    # Few, quick retries: a request during a Redis outage should fail fast, not hang.
    redis = connect(
        settings.redis_url,
        socket_timeout=5.0,
        retry=Retry(ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2),
    )
    history = History(redis)
    # Cluster: sharded pub/sub, one subscription per event on the master owning its slot.
    broker_type = ClusterBroker if is_cluster_url(settings.redis_url) else RedisBroker
    broker = broker_type(settings.redis_url, history, replica.stats)
    hub = Hub(broker, settings.outbound_buffer_bytes, replica.flusher, replica.stats)
    replica.runtime = Runtime(redis=redis, history=history, broker=broker, hub=hub)
    broker_task = asyncio.create_task(broker.run(hub), name="redis-broker")
    try:
        # uvicorn hands this state to every connection it builds (`app_state`).
        yield {ENDPOINT_STATE_KEY: WebSocketEndpoint(replica.services())}
    finally:
        broker_task.cancel()
        # Bounded: a broker stuck in a client library must not keep the process alive.
        await asyncio.wait({broker_task}, timeout=BROKER_STOP_SECONDS)
        if not broker_task.done():
            logger.warning("the broker did not stop in time")
        replica.expiry.close()
        await history.aclose()
        await broker.close()
        await redis.aclose()


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    replica: Replica = request.app.state.replica
    reasons = []
    if replica.draining:
        reasons.append("draining")
    if replica.sessions.full:
        reasons.append("connection limit reached")
    runtime = replica.runtime
    if runtime is None or not runtime.broker.connected:
        reasons.append("redis pub/sub not connected")
    elif not await _redis_answers(runtime):
        reasons.append("redis not answering")
    if reasons:
        return JSONResponse({"status": "not_ready", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready"})


async def _redis_answers(runtime: Runtime) -> bool:
    try:
        async with asyncio.timeout(READY_CHECK_SECONDS):
            return bool(await runtime.redis.ping())
    except (RedisError, RedisClusterException, OSError):
        return False


async def metrics(request: Request) -> Response:
    replica: Replica = request.app.state.replica
    return Response(replica.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


def static_file(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    path = STATIC_DIR / name

    async def serve(request: Request) -> Response:
        if not path.is_file():
            return JSONResponse(
                {"error": {"code": "not_found", "message": f"{name} is not installed"}}, 404
            )
        return FileResponse(path, media_type=media_type)

    return serve
