"""Everything one replica owns, built by the app factory; nothing lives at module level.

The parts that need a running loop and Redis (client, history, broker, hub)
are made by the lifespan and kept in `Runtime`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gateway.fanin.broker import Broker
from gateway.fanin.history import History
from gateway.fanout.hub import Hub
from gateway.fanout.outbound import Flusher
from gateway.fanout.stats import LatencyHistogram, Stats
from gateway.process.metrics import Gauges, Metrics
from gateway.session.expiry import ExpiryClock
from gateway.session.registry import Sessions
from gateway.session.session import Services
from shared.redis_connect import AnyRedis
from shared.settings import GatewaySettings
from shared.tokens import TokenVerifier


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
    # Open, authenticated sessions; the draining flag.
    sessions: Sessions = field(init=False)
    started_at: float = field(default_factory=time.monotonic)
    # Set by the lifespan; None before startup and after shutdown.
    runtime: Runtime | None = None
    delivery_latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    metrics: Metrics = field(init=False)
    # Writes each loop turn's gathered frames; shared by the hub and every outbound.
    flusher: Flusher = field(init=False)
    # Closes sessions whose token expired.
    expiry: ExpiryClock = field(default_factory=ExpiryClock)

    def __post_init__(self) -> None:
        self.sessions = Sessions(self.settings.max_connections)
        self.metrics = Metrics(
            self.stats,
            Gauges(
                connections=lambda: len(self.sessions),
                subscriptions=lambda: self.hub.subscription_count if self.runtime else 0,
                events_watched=lambda: len(self.hub.watched_events()) if self.runtime else 0,
            ),
            self.delivery_latency,
        )
        self.flusher = Flusher(self.delivery_latency.observe)

    @property
    def hub(self) -> Hub:
        assert self.runtime is not None, "the replica has not started"
        return self.runtime.hub

    @property
    def draining(self) -> bool:
        return self.sessions.draining

    def services(self) -> Services:
        """What its sessions use; once the lifespan has made the runtime."""
        runtime = self.runtime
        assert runtime is not None, "the replica has not started"
        return Services(
            settings=self.settings,
            verifier=self.verifier,
            hub=runtime.hub,
            history=runtime.history,
            stats=self.stats,
            flusher=self.flusher,
            expiry=self.expiry,
            sessions=self.sessions,
            stats_data=self.stats_data,
        )

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
