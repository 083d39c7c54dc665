"""The floor: the least work a Python server can do per delivered message.

One Redis pub/sub connection read with a bare RESP reader, one WebSocket frame
built per message and handed to `transport.write()` of every watcher. What a
real gateway costs above this is its framework's overhead per delivery.

It speaks just enough of contract section 5 for the load client:
`/ws/events/{id}?token=…` (the token is verified, as the gateway does),
`connection_established`, then `subscribed` once Redis confirmed the
subscription, then every message of the event. A benchmark's floor, not a
product: it never unsubscribes, and it exits when Redis goes away.

    JWT_SECRET=… python -m bench.floor --port 8101 --redis-url redis://127.0.0.1:6379/0
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
from collections.abc import Callable
from typing import cast
from urllib.parse import parse_qs, urlsplit

import uvloop
from picows import (
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
    ws_create_server,
)

from bench.frames import text_frame
from bench.resp import Item, PushReader, command
from shared.channels import event_channel
from shared.messages import encode, utc_now_iso
from shared.settings import JwtKeys
from shared.tokens import InvalidToken, TokenVerifier

EVENT_PATH = re.compile(r"/ws/events/([1-9][0-9]{0,17})")
HEALTH_PATHS = ("/healthz", "/readyz")

PushHandler = Callable[[list[Item]], None]
Routed = WSListener | WSUpgradeResponseWithListener | None


class RedisLink(asyncio.Protocol):
    """The one pub/sub connection: SUBSCRIBE out, pushes in."""

    def __init__(self, on_push: PushHandler) -> None:
        self._on_push = on_push
        self._reader = PushReader()
        # Set by connection_made; None before.
        self._transport: asyncio.Transport | None = None
        # Resolved when Redis closes the connection: the floor then exits.
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not derive from asyncio.Transport, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        for push in self._reader.feed(data):
            self._on_push(push)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def subscribe(self, channel: bytes) -> None:
        assert self._transport is not None
        self._transport.write(command(b"SUBSCRIBE", channel))


class Hub:
    """Which sockets watch which channel; writes each message's frame to all of them."""

    def __init__(self) -> None:
        # Set once Redis is connected; join() needs it.
        self.link: RedisLink | None = None
        # channel -> {id(ws): raw transport} of the watchers that got `subscribed`.
        self._live: dict[bytes, dict[int, asyncio.Transport]] = {}
        # channel -> watchers waiting for Redis to confirm the subscription.
        self._waiting: dict[bytes, list[tuple[int, WSTransport]]] = {}

    def join(self, event_id: int, ws: WSTransport) -> None:
        channel = event_channel(event_id).encode()
        if channel in self._live:
            self._welcome(channel, event_id, ws)
            return
        if channel not in self._waiting:
            assert self.link is not None
            self.link.subscribe(channel)
        self._waiting.setdefault(channel, []).append((event_id, ws))

    def leave(self, event_id: int, ws: WSTransport) -> None:
        channel = event_channel(event_id).encode()
        self._live.get(channel, {}).pop(id(ws), None)

    def on_push(self, push: list[Item]) -> None:
        kind, channel = push[0], push[1]
        assert isinstance(channel, bytes)
        if kind == b"message":
            payload = push[2]
            assert isinstance(payload, bytes)
            self.deliver(channel, payload)
        elif kind == b"subscribe":
            self._confirmed(channel)

    def deliver(self, channel: bytes, payload: bytes) -> None:
        watchers = self._live.get(channel)
        if not watchers:
            return
        frame = text_frame(payload)
        for transport in watchers.values():
            transport.write(frame)

    def _confirmed(self, channel: bytes) -> None:
        self._live.setdefault(channel, {})
        for event_id, ws in self._waiting.pop(channel, []):
            if not ws.is_disconnected:
                self._welcome(channel, event_id, ws)

    def _welcome(self, channel: bytes, event_id: int, ws: WSTransport) -> None:
        subscribed = {
            "type": "subscribed",
            "eventId": event_id,
            "seq": None,
            "availableSeats": None,
            "timestamp": utc_now_iso(),
        }
        ws.send(WSMsgType.TEXT, encode(subscribed))
        self._live[channel][id(ws)] = ws.underlying_transport


class Watcher(WSListener):
    """One client watching one event."""

    def __init__(self, hub: Hub, event_id: int, client_id: str) -> None:
        super().__init__()
        self._hub = hub
        self._event_id = event_id
        self._client_id = client_id

    def on_ws_connected(self, transport: WSTransport) -> None:
        established = {
            "type": "connection_established",
            "clientId": self._client_id,
            "eventId": self._event_id,
            "timestamp": utc_now_iso(),
        }
        transport.send(WSMsgType.TEXT, encode(established))
        self._hub.join(self._event_id, transport)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self._hub.leave(self._event_id, transport)


class Router:
    """picows calls this with each request: health answers, watchers, or 404."""

    def __init__(self, hub: Hub, verifier: TokenVerifier) -> None:
        self._hub = hub
        self._verifier = verifier
        self._client_ids = itertools.count(1)

    def __call__(self, request: WSUpgradeRequest) -> Routed:
        parts = urlsplit(request.path.decode("latin-1"))
        if parts.path in HEALTH_PATHS:
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_ok_response(b"ok"), None)
        match = EVENT_PATH.fullmatch(parts.path)
        if match is None:
            return None
        try:
            self._verifier.verify(parse_qs(parts.query).get("token", [""])[0])
        except InvalidToken:
            return WSUpgradeResponseWithListener(WSUpgradeResponse.create_error_response(401), None)
        return Watcher(self._hub, int(match.group(1)), str(next(self._client_ids)))


async def serve(host: str, port: int, redis_url: str, secret: str) -> None:
    """Serve until SIGTERM/SIGINT or until Redis closes the connection."""
    loop = asyncio.get_running_loop()
    hub = Hub()
    redis = urlsplit(redis_url)
    _, link = await loop.create_connection(
        lambda: RedisLink(hub.on_push), redis.hostname or "127.0.0.1", redis.port or 6379
    )
    hub.link = link
    router = Router(hub, TokenVerifier(JwtKeys(secret=secret, public_key=None)))
    server = await ws_create_server(router, host, port, backlog=4096, enable_auto_ping=False)
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopped: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    redis_lost: asyncio.Future[None] = link.lost
    await asyncio.wait((stopped, redis_lost), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    # Exiting closes the open sockets; a floor owes its clients no drain.
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description="the floor server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8101)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    secret = os.environ.get("JWT_SECRET", "")
    if not secret:
        parser.exit(2, "seatcast: JWT_SECRET is required but not set\n")
    uvloop.run(serve(args.host, args.port, args.redis_url, secret))


if __name__ == "__main__":
    main()
