"""This replica's running totals and delivery-latency histogram: plain numbers on the hot path.

Bumped by the hub, the outbounds, the fan-in and the sessions; exported to
Prometheus at scrape time (gateway/process/metrics.py).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Stats:
    """Running totals."""

    messages_in: int = 0
    deliveries: int = 0
    client_messages: int = 0
    slow_consumer_closes: int = 0
    gaps_filled: int = 0
    redis_reconnects: int = 0


class LatencyHistogram:
    """Delivery latency, observed once per message, on the event loop only.

    prometheus_client's `Histogram` takes a lock per observation, for threads
    this process does not have; this is a list of counts.
    """

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        # Observations per bucket, not cumulative; the last one is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds
