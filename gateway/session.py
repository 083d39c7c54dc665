"""One client connection: its token, its subscriptions, its reading.

With WS_IMPL=fast the ASGI handler task sets the session up and ends: the
connection hands client messages to the session as they arrive (`listen`),
and a task exists only while one is being handled. Frames go straight to the
transport (`FrameWriter`), and a close is written at once, ending the read.
With uvicorn's implementations the handler task owns the session, running
the reader and a writer task (the outbound queue) as two children; whichever
ends first ends the session. Anything may ask for a close (`writer.close`):
the rate limit, the token's expiry, an overflow, a drain.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from typing import Any, Final

from redis.exceptions import RedisClusterException, RedisError
from starlette.websockets import WebSocket

from gateway import protocol
from gateway.broker import BrokerUnavailable
from gateway.fastws import FrameSink, frame_sink
from gateway.frame_writer import FrameWriter
from gateway.history import EventState
from gateway.hub import UNKNOWN_SEQ, Subscription
from gateway.protocol import Command, ProtocolError
from gateway.publication import outgoing
from gateway.ratelimit import RateLimit
from gateway.replica import Replica
from gateway.writer import Writer
from shared.messages import iso
from shared.tokens import Claims, InvalidToken

POLICY_VIOLATION: Final = 1008
INTERNAL_ERROR: Final = 1011
RATE_LIMIT_REASON: Final = "Too many messages"
EXPIRED_REASON: Final = "Authentication token expired"
UNAVAILABLE_TEXT: Final = "Event feed temporarily unavailable, try again"
CLOSE_TIMEOUT_SECONDS: Final = 10.0

logger = logging.getLogger(__name__)


class Session:
    """An authenticated connection and what it watches."""

    # One per connection, alive as long as it is.
    __slots__ = (
        "_limit",
        "_reading",
        "_released",
        "_replica",
        "_sink",
        "_subscriptions",
        "_websocket",
        "claims",
        "client_id",
        "writer",
    )

    def __init__(self, websocket: WebSocket, replica: Replica, claims: Claims) -> None:
        # None once the connection hands its messages over (WS_IMPL=fast).
        self._websocket: WebSocket | None = websocket
        self._replica = replica
        self.claims = claims
        self.client_id = secrets.token_hex(16)
        settings = replica.settings
        sink = self._sink = frame_sink(websocket)
        self.writer: Writer | FrameWriter
        if sink is not None:
            self.writer = FrameWriter(
                sink, settings.outbound_buffer_bytes, replica.stats, replica.flusher
            )
        else:
            self.writer = Writer(
                websocket,
                settings.outbound_buffer_bytes,
                replica.stats,
                close_timeout=CLOSE_TIMEOUT_SECONDS,
            )
        self._limit = RateLimit(settings.max_client_messages_per_second)
        # event id -> this session's watch of it.
        self._subscriptions: dict[int, Subscription] = {}
        # True once the session gave its watches back to the hub; it takes no new ones.
        self._released = False
        # True while a task handles messages the connection handed over.
        self._reading = False

    @property
    def watched_events(self) -> frozenset[int]:
        return frozenset(self._subscriptions)

    def close(self, code: int, reason: str) -> None:
        self.writer.close(code, reason)

    async def run(self, path_event: str | None) -> bool:
        """Serve the connection: until either side closes it, or until it is handed over.

        True means handed over (WS_IMPL=fast): the session then reads what
        the connection hands it (`_wake`) and ends itself (`_end`). An idle
        client then holds no task at all: 4 KiB of every connection, and less
        for the collector to walk (issue 4's memory profile). Otherwise the
        session has ended when this returns.
        """
        self._send(protocol.connection_established(self.client_id, _path_event_id(path_event)))
        self._watch_expiry()
        if self._sink is None:
            assert isinstance(self.writer, Writer)
            await self._read_and_write(self.writer, path_event)
            return False
        try:
            if path_event is not None:
                await self._guarded(self._path_subscribe(path_event))
                _raise_if_cancelled()
        except BaseException:
            self._release()
            raise
        self._websocket = None
        self._sink.listen(self._wake)
        return True

    async def _read_and_write(self, writer: Writer, path_event: str | None) -> None:
        reader = asyncio.create_task(self._read(path_event))
        writer_task = asyncio.create_task(writer.run())
        try:
            await asyncio.wait({reader, writer_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            writer_task.cancel()
            try:
                await asyncio.wait({reader, writer_task})
            finally:
                # Even when this wait is itself cancelled (server shutdown), the hub
                # must not keep watchers for a connection that is gone.
                self._release()
            for task in (reader, writer_task):
                if not task.cancelled() and task.exception() is not None:
                    logger.error(
                        "session task failed",
                        exc_info=task.exception(),
                        extra={"clientId": self.client_id},
                    )

    def _release(self) -> None:
        self._released = True
        self._replica.expiry.forget(self)
        for subscription in self._subscriptions.values():
            self._replica.hub.unsubscribe(subscription)
        self._subscriptions.clear()

    async def _read(self, path_event: str | None) -> None:
        if path_event is not None:
            await self._guarded(self._path_subscribe(path_event))
        assert self._websocket is not None
        receive = self._websocket.receive
        while await self._on_message(await receive()):
            _raise_if_cancelled()

    def _wake(self) -> None:
        """A message arrived: read it, and any after it, in a task while there are some."""
        if not self._reading and not self._released:
            assert self._sink is not None
            self._reading = True
            self._sink.spawn(self._read_arrived(self._sink))

    async def _read_arrived(self, sink: FrameSink) -> None:
        try:
            while (message := sink.take()) is not None:
                if not await self._on_message(message):
                    self._end()
                    return
                _raise_if_cancelled()
        except BaseException:
            # Cancelled at shutdown: the hub must not keep watchers for a connection
            # nobody serves.
            self._end()
            raise
        finally:
            self._reading = False

    def _end(self) -> None:
        """The end of a handed-over connection: watches back, out of the replica."""
        assert self._sink is not None
        # The connection's mailbox refers to this session: a closed connection is
        # freed by reference counting, not left for the collector.
        self._sink.listen(None)
        self._release()
        self._replica.remove_session(self)

    async def _on_message(self, message: Mapping[str, Any]) -> bool:
        """Handle one client message; False once it says the client is gone."""
        if message["type"] == "websocket.disconnect":
            self.writer.peer_gone()
            return False
        self._replica.stats.client_messages += 1
        if self.writer.close_request is not None:
            return True
        if not self._limit.allow(asyncio.get_running_loop().time()):
            self.close(POLICY_VIOLATION, RATE_LIMIT_REASON)
            return True
        text = message.get("text")
        command = protocol.parse(text if text is not None else message.get("bytes", b""))
        await self._guarded(self._handle(command))
        return True

    async def _guarded(self, step: Any) -> None:
        try:
            await step
        except Exception:
            # A bug must not leave the client hanging: say so with 1011, keep the replica up.
            logger.exception("session failed", extra={"clientId": self.client_id})
            self.close(INTERNAL_ERROR, "Internal error")

    async def _path_subscribe(self, path_event: str) -> None:
        event_id = protocol.parse_event_id(path_event)
        if event_id is None:
            self._error(protocol.INVALID_EVENT_ID, protocol.INVALID_EVENT_ID_TEXT)
            return
        await self._subscribe(protocol.SubscribeEvent(event_id=event_id, add=False, since=None))

    async def _handle(self, command: Command | ProtocolError) -> None:
        match command:
            case ProtocolError(code=code, message=text):
                self._error(code, text)
            case protocol.SubscribeEvent():
                await self._subscribe(command)
            case protocol.UnsubscribeEvent(event_id=event_id):
                self._drop(event_id)
                self._send(protocol.unsubscribed(event_id))
            case protocol.Ping():
                self._send(protocol.pong())
            case protocol.GetStats():
                self._get_stats()
            case protocol.RefreshToken(token=token):
                self._refresh(token)

    async def _subscribe(self, command: protocol.SubscribeEvent) -> None:
        event_id = command.event_id
        limit = self._replica.settings.max_subscriptions
        if (
            command.add
            and event_id not in self._subscriptions
            and len(self._subscriptions) >= limit
        ):
            self._error(
                protocol.TOO_MANY_SUBSCRIPTIONS, f"At most {limit} subscriptions per connection"
            )
            return
        if not command.add:
            for other in [e for e in self._subscriptions if e != event_id]:
                self._drop(other)
        since = command.since
        subscription = Subscription(event_id, self.writer, UNKNOWN_SEQ if since is None else since)
        hub = self._replica.hub
        try:
            await hub.subscribe(subscription)
        except BrokerUnavailable:
            self._error(protocol.UNAVAILABLE, UNAVAILABLE_TEXT)
            return
        if self._released:  # the session ended while the broker confirmed
            hub.unsubscribe(subscription)
            return
        # The new watch is registered first, so the broker keeps the event throughout.
        previous = self._subscriptions.pop(event_id, None)
        if previous is not None:
            hub.unsubscribe(previous)
        self._subscriptions[event_id] = subscription
        try:
            await self._start(subscription, since)
        # RedisClusterException is not a RedisError: a Cluster without a reachable
        # owner must also answer `unavailable`, not close the connection.
        except (RedisError, RedisClusterException, OSError):
            self._drop(event_id)
            self._error(protocol.UNAVAILABLE, UNAVAILABLE_TEXT)

    async def _start(self, subscription: Subscription, since: int | None) -> None:
        """Send `subscribed`, the replay `since` asks for, then go live: no gap, no duplicate."""
        assert self._replica.runtime is not None
        history = self._replica.runtime.history
        event_id = subscription.event_id
        state = await history.state(event_id)
        if since is None:
            subscription.last_seq = state.seq or 0
            self._send(protocol.subscribed(event_id, state.seq, state.available_seats, None))
            subscription.go_live()
            return
        replay = await history.read(event_id, since + 1)
        recovered = _recovered(since, state, [p.seq for p in replay])
        if not recovered:
            subscription.last_seq = max(since, state.seq or 0)
        self._send(protocol.subscribed(event_id, state.seq, state.available_seats, recovered))
        if recovered:
            for publication in replay:
                subscription.deliver(publication)
        subscription.go_live()

    def _drop(self, event_id: int) -> None:
        subscription = self._subscriptions.pop(event_id, None)
        if subscription is not None:
            self._replica.hub.unsubscribe(subscription)

    def _get_stats(self) -> None:
        if not self.claims.is_admin:
            self._error(protocol.FORBIDDEN, "Admin rights required")
            return
        self._send(protocol.stats(self._replica.stats_data()))

    def _refresh(self, token: str) -> None:
        try:
            claims = self._replica.verifier.verify(token)
        except InvalidToken:
            self._error(protocol.INVALID_TOKEN, "Invalid authentication token")
            return
        if claims.user_id != self.claims.user_id:
            self._error(protocol.INVALID_TOKEN, "The new token must be for the same user")
            return
        self.claims = claims
        self._watch_expiry()
        expires_at = None if claims.expires_at is None else iso(claims.expires_at)
        self._send(protocol.token_refreshed(expires_at))

    def _watch_expiry(self) -> None:
        expires_at = self.claims.expires_at
        if expires_at is None:
            self._replica.expiry.forget(self)
        else:
            self._replica.expiry.watch(self, expires_at.timestamp())

    def expired(self) -> None:
        """The token's `exp` has passed (the replica's `ExpiryClock` calls this)."""
        self.close(POLICY_VIOLATION, EXPIRED_REASON)

    def _send(self, message: dict[str, Any]) -> None:
        self.writer.offer(outgoing(message))

    def _error(self, code: protocol.ErrorCode, text: str) -> None:
        self._send(protocol.error_message(code, text))


def _raise_if_cancelled() -> None:
    """Python 3.11's wait_for (used by redis-py) can drop a cancellation racing a reply."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _path_event_id(path_event: str | None) -> int | None:
    return None if path_event is None else protocol.parse_event_id(path_event)


def _recovered(since: int, state: EventState, replayed: list[int]) -> bool:
    """Whether history still reaches back to `since + 1` (contract: `recovered`)."""
    if replayed:
        return replayed[0] == since + 1
    if state.seq is None:
        return since == 0
    return state.seq <= since
