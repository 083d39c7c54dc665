"""The Prometheus face of this replica's counters, gauges and latency histogram.

Every app gets its own `CollectorRegistry`, so several replicas can live in
one process (tests) without sharing a metric.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gateway.fanout.stats import LatencyHistogram, Stats


@dataclass(frozen=True)
class Gauges:
    """Readers of the live sizes the collector reports."""

    connections: Callable[[], int]
    subscriptions: Callable[[], int]
    events_watched: Callable[[], int]


class Metrics:
    """The Prometheus face of `Stats`, the gauges and the delivery-latency histogram."""

    def __init__(self, stats: Stats, gauges: Gauges, delivery_latency: LatencyHistogram) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_StatsCollector(stats, gauges))
        self.registry.register(_LatencyCollector(delivery_latency))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LatencyCollector(Collector):
    def __init__(self, histogram: LatencyHistogram) -> None:
        self._histogram = histogram

    def collect(self) -> Iterator[Metric]:
        histogram = self._histogram
        cumulative, buckets = 0, []
        for bound, count in zip((*histogram.bounds, float("inf")), histogram.counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        yield HistogramMetricFamily(
            "seatcast_gateway_delivery_latency_seconds",
            "Time from a message's timestamp until this replica handed it to its watchers' "
            "connections, observed once per message.",
            buckets=buckets,
            sum_value=histogram.sum,
        )


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class _StatsCollector(Collector):
    def __init__(self, stats: Stats, gauges: Gauges) -> None:
        self._stats = stats
        self._gauges = gauges

    def collect(self) -> Iterator[Metric]:
        stats, gauges = self._stats, self._gauges
        yield _gauge("connections", "Open client WebSocket connections.", gauges.connections())
        yield _gauge("subscriptions", "Client subscriptions to events.", gauges.subscriptions())
        yield _gauge(
            "events_watched", "Events this replica subscribes to in Redis.", gauges.events_watched()
        )
        # Tasks left behind by closed connections would show here first (the soak test reads it).
        yield _gauge("asyncio_tasks", "asyncio tasks alive in this process.", _task_count())
        yield _counter("redis_messages", "Messages received from Redis pub/sub.", stats.messages_in)
        yield _counter("deliveries", "Messages written to client sockets.", stats.deliveries)
        yield _counter("client_messages", "Frames received from clients.", stats.client_messages)
        yield _counter(
            "slow_consumer_disconnects",
            "Clients closed with 4008 because their outbound buffer overflowed.",
            stats.slow_consumer_closes,
        )
        yield _counter(
            "gap_fills", "Messages read from history to fill a seq gap.", stats.gaps_filled
        )
        yield _counter(
            "redis_reconnects", "Reconnections of the Redis pub/sub link.", stats.redis_reconnects
        )


def _task_count() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # scraped outside the replica's event loop
        return 0


def _gauge(name: str, documentation: str, value: int) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"seatcast_gateway_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: int) -> CounterMetricFamily:
    return CounterMetricFamily(f"seatcast_gateway_{name}", documentation, value=value)
