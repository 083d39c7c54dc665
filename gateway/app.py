"""The app factory: routes plus a lifespan that owns Redis, the broker and the hub.

`create_app(settings)` builds a fresh `Replica` every time, so one process can
host several replicas (tests do).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import parse_qsl

from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import RedisClusterException, RedisError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway.broker_cluster import ClusterBroker
from gateway.broker_redis import RedisBroker
from gateway.drain import SERVICE_RESTART
from gateway.history import History
from gateway.hub import Hub
from gateway.replica import Replica, Runtime
from gateway.session import POLICY_VIOLATION, Session
from shared.redis_connect import connect, is_cluster_url
from shared.settings import GatewaySettings, gateway_settings
from shared.tokens import InvalidToken, TokenVerifier

STATIC_DIR: Final = Path(__file__).parent / "static"
# `/ws` and `/ws/events/{event_id}`, as the routes below say; the group is the event id.
WEBSOCKET_PATH: Final = re.compile(r"/ws(?:/events/([^/]+))?")
TRY_AGAIN_LATER: Final = 1013
TOKEN_REQUIRED: Final = "Authentication token required"
TOKEN_INVALID: Final = "Invalid authentication token"
READY_CHECK_SECONDS: Final = 1.0
BROKER_STOP_SECONDS: Final = 3.0

logger = logging.getLogger(__name__)


class GatewayApp(Starlette):
    """Starlette, with the WebSocket routes served straight from `__call__`.

    Every connection's task stays suspended for its whole life in whatever
    called the endpoint. Through Starlette's middleware and router that is
    eleven coroutine frames and their closures, about 4.5 KiB per idle
    client (issue 4's memory profile); none of those layers does anything
    for a WebSocket here. Other paths, and WebSocket paths that are not
    ours, still go through the whole stack.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and _route_websocket(scope):
            scope["app"] = self
            await websocket_endpoint(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def _route_websocket(scope: Scope) -> bool:
    """Whether the path is one of ours; sets `path_params` as the router would."""
    # A function of its own, so no match object stays alive in the connection's frame.
    match = WEBSOCKET_PATH.fullmatch(scope["path"])
    if match is None:
        return False
    scope["path_params"] = {"event_id": match[1]} if match[1] is not None else {}
    return True


def create_app(settings: GatewaySettings) -> Starlette:
    """A gateway replica as an ASGI app; its `Replica` is `app.state.replica`."""
    replica = Replica(settings=settings, verifier=TokenVerifier(settings.jwt))
    app = GatewayApp(
        routes=[
            WebSocketRoute("/ws", websocket_endpoint),
            WebSocketRoute("/ws/events/{event_id}", websocket_endpoint),
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
async def lifespan(app: Starlette) -> AsyncIterator[None]:
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
        yield
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


async def websocket_endpoint(websocket: WebSocket) -> None:
    replica: Replica = websocket.app.state.replica
    if not replica.origin_allowed(_header(websocket, b"origin")):
        # Closing before accepting makes the server answer the handshake with 403.
        await websocket.close(code=POLICY_VIOLATION)
        return
    await websocket.accept()
    try:
        session = _admit(websocket, replica)
        if isinstance(session, tuple):
            await websocket.close(*session)
            return
    except WebSocketDisconnect:
        return
    # Read and done with: kept, the headers would cost every idle client 0.7 KiB.
    websocket.scope["headers"] = []
    replica.add_session(session)
    handed_over = False
    try:
        handed_over = await session.run(websocket.path_params.get("event_id"))
    finally:
        if not handed_over:  # else the session leaves the replica when it ends
            replica.remove_session(session)


def _admit(websocket: WebSocket, replica: Replica) -> Session | tuple[int, str]:
    """A session for this connection, or the (code, reason) to close it with.

    Nothing here awaits, so checking the limit and registering the session
    cannot interleave with another connection's.
    """
    if replica.draining:
        return SERVICE_RESTART, "Server shutting down, reconnect elsewhere"
    if replica.full:
        return TRY_AGAIN_LATER, "Too many connections, try again later"
    token = _token(websocket)
    if token is None:
        return POLICY_VIOLATION, TOKEN_REQUIRED
    try:
        claims = replica.verifier.verify(token)
    except InvalidToken:
        return POLICY_VIOLATION, TOKEN_INVALID
    return Session(websocket, replica, claims)


def _token(websocket: WebSocket) -> str | None:
    token = _query_value(websocket, "token")
    if token:
        return token
    scheme, _, credentials = (_header(websocket, b"authorization") or "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


# Read straight from the scope: Starlette's `headers` and `query_params` would stay
# cached on the WebSocket, with every header, for the connection's life (1.5 KiB).


def _header(websocket: WebSocket, name: bytes) -> str | None:
    """The first value of header `name` (lowercase), or None."""
    for key, value in websocket.scope["headers"]:
        if key.lower() == name:
            return str(value.decode("latin-1"))
    return None


def _query_value(websocket: WebSocket, name: str) -> str | None:
    """The last value of query parameter `name`, as Starlette's `query_params` gives it."""
    query = websocket.scope["query_string"].decode("latin-1")
    values = [value for key, value in parse_qsl(query, keep_blank_values=True) if key == name]
    return values[-1] if values else None


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    replica: Replica = request.app.state.replica
    reasons = []
    if replica.draining:
        reasons.append("draining")
    if replica.full:
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
