"""One client connection's conversation: its token, its subscriptions, its commands.

The connection hands the session client messages as they arrive
(`messages_arrived`); a task reads them only while there are some, so an idle
client holds no task. Everything the session writes goes through the
connection's one `Outbound`: replies, replayed history, and (through the hub)
live publications. Anything may ask for a close (`close`): the rate limit,
the token's expiry, an overflow, a drain; the outbound's close sequence is
the same for all of them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final, Protocol

from redis.exceptions import RedisClusterException, RedisError

from gateway.fanin.broker import BrokerUnavailable
from gateway.fanin.history import EventState, History
from gateway.fanout.hub import UNKNOWN_SEQ, Hub, Subscription
from gateway.fanout.outbound import Flusher, Outbound, Sink
from gateway.fanout.publication import outgoing
from gateway.fanout.stats import Stats
from gateway.session import commands as protocol
from gateway.session.commands import Command, ProtocolError
from gateway.session.expiry import ExpiryClock
from gateway.session.limits import RateLimit
from gateway.session.registry import Sessions
from shared.aio import raise_if_cancelling
from shared.messages import iso
from shared.settings import GatewaySettings
from shared.tokens import Claims, InvalidToken, TokenVerifier

POLICY_VIOLATION: Final = 1008
INTERNAL_ERROR: Final = 1011
RATE_LIMIT_REASON: Final = "Too many messages"
EXPIRED_REASON: Final = "Authentication token expired"
UNAVAILABLE_TEXT: Final = "Event feed temporarily unavailable, try again"

logger = logging.getLogger(__name__)


class Connection(Sink, Protocol):
    """What a session needs of its connection (gateway/wire/connection.py for WebSocket)."""

    def take(self) -> str | bytes | None:
        """The oldest client message not handled yet, or None."""

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` as a task the server owns (it waits for it, then cancels it, at shutdown)."""


@dataclass(frozen=True, eq=False)
class Services:
    """What sessions use of their replica, made by the replica's lifespan."""

    settings: GatewaySettings
    verifier: TokenVerifier
    hub: Hub
    history: History
    stats: Stats
    flusher: Flusher
    expiry: ExpiryClock
    sessions: Sessions
    # The `data` of a `stats` reply.
    stats_data: Callable[[], dict[str, Any]]


class Session:
    """An authenticated connection and what it watches."""

    # One per connection, alive as long as it is.
    __slots__ = (
        "_connection",
        "_limit",
        "_reading",
        "_released",
        "_services",
        "_subscriptions",
        "claims",
        "client_id",
        "outbound",
    )

    def __init__(
        self, connection: Connection, head: bytes, services: Services, claims: Claims
    ) -> None:
        self._connection = connection
        self._services = services
        self.claims = claims
        self.client_id = secrets.token_hex(16)
        settings = services.settings
        self.outbound = Outbound(
            connection, head, settings.outbound_buffer_bytes, services.stats, services.flusher
        )
        self._limit = RateLimit(settings.max_client_messages_per_second)
        # event id -> this session's watch of it.
        self._subscriptions: dict[int, Subscription] = {}
        # True once the session gave its watches back to the hub; it takes no new ones.
        self._released = False
        # True while a task reads the connection's messages.
        self._reading = False

    @property
    def watched_events(self) -> frozenset[int]:
        return frozenset(self._subscriptions)

    def close(self, code: int, reason: str) -> None:
        self.outbound.close(code, reason)

    def start(self, path_event: str | None) -> None:
        """Greet the client; subscribe to the path's event, if any, before reading commands."""
        self._send(protocol.connection_established(self.client_id, _path_event_id(path_event)))
        self._watch_expiry()
        if path_event is not None:
            self._reading = True
            self._connection.spawn(self._read(path_event))

    def messages_arrived(self) -> None:
        """Read what arrived, and any that follow, in a task while there are some."""
        if not self._reading and not self._released:
            self._reading = True
            self._connection.spawn(self._read())

    def closed(self) -> None:
        """The conversation is over: write nothing more, and leave the replica."""
        self.outbound.peer_gone()
        # Not now: this may be called from inside a fan-out (an overflow's close), whose
        # watchers must not change while it runs.
        asyncio.get_running_loop().call_soon(self._end)

    async def _read(self, path_event: str | None = None) -> None:
        try:
            if path_event is not None:
                await self._guarded(self._path_subscribe(path_event))
                raise_if_cancelling()
            take = self._connection.take
            while (message := take()) is not None:
                await self._on_message(message)
                raise_if_cancelling()
        except BaseException:
            # Cancelled at shutdown: the hub must not keep watchers for a connection
            # nobody serves.
            self._end()
            raise
        finally:
            self._reading = False

    def _end(self) -> None:
        """Give every watch back and leave the replica; again is fine."""
        if self._released:
            return
        self._released = True
        services = self._services
        services.expiry.forget(self)
        for subscription in self._subscriptions.values():
            services.hub.unsubscribe(subscription)
        self._subscriptions.clear()
        services.sessions.remove(self)

    async def _on_message(self, message: str | bytes) -> None:
        self._services.stats.client_messages += 1
        if self.outbound.close_request is not None:
            return
        if not self._limit.allow(asyncio.get_running_loop().time()):
            self.close(POLICY_VIOLATION, RATE_LIMIT_REASON)
            return
        await self._guarded(self._handle(protocol.parse(message)))

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
        limit = self._services.settings.max_subscriptions
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
        subscription = Subscription(
            event_id, self.outbound, UNKNOWN_SEQ if since is None else since
        )
        hub = self._services.hub
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
        history = self._services.history
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
            self._services.hub.unsubscribe(subscription)

    def _get_stats(self) -> None:
        if not self.claims.is_admin:
            self._error(protocol.FORBIDDEN, "Admin rights required")
            return
        self._send(protocol.stats(self._services.stats_data()))

    def _refresh(self, token: str) -> None:
        try:
            claims = self._services.verifier.verify(token)
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
            self._services.expiry.forget(self)
        else:
            self._services.expiry.watch(self, expires_at.timestamp())

    def expired(self) -> None:
        """The token's `exp` has passed (the replica's `ExpiryClock` calls this)."""
        self.close(POLICY_VIOLATION, EXPIRED_REASON)

    def _send(self, message: dict[str, Any]) -> None:
        self.outbound.send(outgoing(message))

    def _error(self, code: protocol.ErrorCode, text: str) -> None:
        self._send(protocol.error_message(code, text))


def _path_event_id(path_event: str | None) -> int | None:
    return None if path_event is None else protocol.parse_event_id(path_event)


def _recovered(since: int, state: EventState, replayed: list[int]) -> bool:
    """Whether history still reaches back to `since + 1` (contract: `recovered`)."""
    if replayed:
        return replayed[0] == since + 1
    if state.seq is None:
        return since == 0
    return state.seq <= since
