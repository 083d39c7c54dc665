"""Prometheus metrics of one app, in its own registry (no global state)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# A request no route matched: one label value, so scanners cannot grow the series.
UNMATCHED = "<unmatched>"


class ApiMetrics:
    """Requests, bookings and the relay's progress."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "seatcast_api_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "seatcast_api_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.bookings_created = Counter(
            "seatcast_api_bookings_created", "Bookings committed", registry=self.registry
        )
        self.bookings_cancelled = Counter(
            "seatcast_api_bookings_cancelled", "Bookings cancelled", registry=self.registry
        )
        self.outbox_backlog = Gauge(
            "seatcast_api_outbox_backlog",
            "Committed seat changes not yet published to Redis",
            registry=self.registry,
        )
        self.published = Counter(
            "seatcast_api_messages_published",
            "Seat changes published to Redis",
            registry=self.registry,
        )
        self.publish_failures = Counter(
            "seatcast_api_publish_failures",
            "Failed attempts to publish to Redis",
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count and time every HTTP request by its route template, not its raw path."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", UNMATCHED)
            method = scope["method"]
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)
