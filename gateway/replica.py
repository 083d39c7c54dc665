"""Everything one replica owns, built by the app factory; nothing lives at module level.

The parts that need a running loop and Redis (client, history, broker, hub)
are made by the lifespan and kept in `Runtime`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gateway.broker import Broker
from gateway.deadlines import ExpiryClock
from gateway.flusher import Flusher
from gateway.history import History
from gateway.hub import Hub
from gateway.metrics import Gauges, Metrics, Stats
from shared.redis_connect import AnyRedis
from shared.settings import GatewaySettings
from shared.tokens import TokenVerifier

if TYPE_CHECKING:
    from gateway.session import Session


@dataclass(frozen=True)
class Runtime:
    redis: AnyRedis
    history: History
    broker: Broker
    hub: Hub


@dataclass(eq=False)
class Replica:
    settings: GatewaySettings
    verifier: TokenVerifier
    stats: Stats = field(default_factory=Stats)
    # Open, authenticated sessions.
    sessions: set[Session] = field(default_factory=set)
    # Set while no session is open; the drain waits on it.
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # True from SIGTERM on: not ready, no new connections.
    draining: bool = False
    started_at: float = field(default_factory=time.monotonic)
    # Set by the lifespan; None before startup and after shutdown.
    runtime: Runtime | None = None
    metrics: Metrics = field(init=False)
    # Writes each loop turn's gathered frames; shared by the hub and every writer.
    flusher: Flusher = field(init=False)
    # Closes sessions whose token expired.
    expiry: ExpiryClock = field(default_factory=ExpiryClock)

    def __post_init__(self) -> None:
        self.idle.set()
        self.metrics = Metrics(
            self.stats,
            Gauges(
                connections=lambda: len(self.sessions),
                subscriptions=lambda: self.hub.subscription_count if self.runtime else 0,
                events_watched=lambda: len(self.hub.watched_events()) if self.runtime else 0,
            ),
        )
        self.flusher = Flusher(self.metrics.delivery_latency.observe)

    def add_session(self, session: Session) -> None:
        self.sessions.add(session)
        self.idle.clear()

    def remove_session(self, session: Session) -> None:
        self.sessions.discard(session)
        if not self.sessions:
            self.idle.set()

    @property
    def hub(self) -> Hub:
        assert self.runtime is not None, "the replica has not started"
        return self.runtime.hub

    @property
    def full(self) -> bool:
        limit = self.settings.max_connections
        return limit is not None and len(self.sessions) >= limit

    def origin_allowed(self, origin: str | None) -> bool:
        """Browsers always send `Origin`; clients that send none are not browsers and pass."""
        allowed = self.settings.allowed_origins
        if not allowed or origin is None or "*" in allowed:
            return True
        return origin.rstrip("/") in allowed

    def stats_data(self) -> dict[str, Any]:
        """The `data` of a `stats` reply."""
        runtime = self.runtime
        return {
            "connections": len(self.sessions),
            "subscriptions": runtime.hub.subscription_count if runtime else 0,
            "eventsWatched": len(runtime.hub.watched_events()) if runtime else 0,
            "messagesIn": self.stats.messages_in,
            "messagesOut": self.stats.deliveries,
            "clientMessagesIn": self.stats.client_messages,
            "slowConsumerDisconnects": self.stats.slow_consumer_closes,
            "gapFills": self.stats.gaps_filled,
            "redisConnected": bool(runtime and runtime.broker.connected),
            "draining": self.draining,
            "uptimeSeconds": round(time.monotonic() - self.started_at, 3),
        }
