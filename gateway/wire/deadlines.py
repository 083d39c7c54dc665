"""Many deadlines on one timer: keepalive pings for every socket, token expiry for every session.

A `call_later` per connection is a timer handle plus a libuv timer kept for
the connection's whole life, a sizeable share of an idle client's memory.
Items go into buckets `resolution` seconds wide instead, and one timer, set
only while anything is watched, calls what is due. An item is called at most
`resolution` seconds after its deadline.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Deadlines(Generic[T]):
    """Call `on_due(item)` once each watched item's deadline has passed."""

    def __init__(
        self, on_due: Callable[[T], None], *, now: Callable[[], float], resolution: float
    ) -> None:
        self._on_due = on_due
        self._now = now
        self._resolution = resolution
        # Bucket number (deadline / resolution, rounded up) -> the items due within it.
        self._buckets: dict[int, set[T]] = {}
        # The item -> its bucket, to move or drop it.
        self._bucket_of: dict[T, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        # The bucket the timer is set for; None while no timer is set.
        self._next: int | None = None

    def watch(self, item: T, deadline: float) -> None:
        """Call `item` at `deadline` (on the `now` clock), replacing any earlier watch."""
        self.forget(item)
        bucket = math.ceil(deadline / self._resolution)
        self._buckets.setdefault(bucket, set()).add(item)
        self._bucket_of[item] = bucket
        if self._next is None or bucket < self._next:
            self.close()
            self._schedule()

    def forget(self, item: T) -> None:
        bucket = self._bucket_of.pop(item, None)
        if bucket is None:
            return
        items = self._buckets[bucket]
        items.discard(item)
        if not items:
            del self._buckets[bucket]

    def close(self) -> None:
        """Stop the timer; nothing is called any more."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._next = None

    def _schedule(self) -> None:
        if not self._buckets:
            self._timer = self._next = None
            return
        self._next = min(self._buckets)
        delay = max(0.0, self._next * self._resolution - self._now())
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        now = self._now()
        for bucket in sorted(b for b in self._buckets if b * self._resolution <= now):
            for item in self._buckets.pop(bucket):
                del self._bucket_of[item]
                self._on_due(item)
        self._schedule()
