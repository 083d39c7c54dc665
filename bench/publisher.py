"""The benchmark's seat changes, published with the project's own `Publisher`.

Each change's `timestamp` is taken with microseconds right before it is
published, so receipt time minus `timestamp` is the publish-to-receipt latency.
Every event gets seq 1, 2, 3, … in order, as a booking backend publishes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from shared.messages import SeatChange
from shared.publisher import Publisher

# Large enough that availableSeats never reaches zero in a benchmark.
CAPACITY = 10_000_000


def precise_now_iso() -> str:
    """ISO-8601 UTC with microseconds: `2026-11-25T17:00:00.123456Z`."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def seat_change(event_id: int, seq: int) -> SeatChange:
    """The `seq`-th booking of an event, stamped now."""
    return SeatChange(
        type="booking_created",
        event_id=event_id,
        booking_id=f"BK-{event_id:x}-{seq:x}",
        user_id=seq,
        seats=1,
        available_seats=CAPACITY - seq,
        seq=seq,
        timestamp=precise_now_iso(),
    )


class Feed:
    """Publishes changes and counts those Redis refused as already published."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher
        self.published = 0
        self.refused = 0

    async def publish(self, event_id: int, seq: int) -> None:
        if await self._publisher.publish(seat_change(event_id, seq)):
            self.published += 1
        else:
            self.refused += 1

    async def paced(self, event_id: int, count: int, per_second: float) -> None:
        """Seqs 1..count of one event, `per_second` of them each second."""
        for seq, moment in zip(range(1, count + 1), _ticks(per_second), strict=False):
            await _until(moment)
            await self.publish(event_id, seq)

    async def burst(self, event_id: int, count: int) -> None:
        """Seqs 1..count of one event as fast as one publisher goes (each in order)."""
        for seq in range(1, count + 1):
            await self.publish(event_id, seq)

    async def rounds(
        self, event_ids: Sequence[int], count: int, per_second: float, concurrency: int
    ) -> None:
        """`count` rounds, `per_second` a second; each publishes the next seq of every event."""
        for seq, moment in zip(range(1, count + 1), _ticks(per_second), strict=False):
            await _until(moment)
            pending = iter(event_ids)
            await asyncio.gather(*(self._drain(pending, seq) for _ in range(concurrency)))

    async def _drain(self, event_ids: Iterator[int], seq: int) -> None:
        for event_id in event_ids:
            await self.publish(event_id, seq)


def _ticks(per_second: float) -> Iterator[float]:
    """Loop times at which to publish: now, then every 1/per_second seconds."""
    start = asyncio.get_running_loop().time()
    index = 0
    while True:
        yield start + index / per_second
        index += 1


async def _until(moment: float) -> None:
    delay = moment - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)  # pace: the publishing rate is what the scenario sets
