"""At most N client messages in any one second (a sliding log)."""

from __future__ import annotations

from collections import deque


class RateLimit:
    __slots__ = ("_arrivals", "_per_second")

    def __init__(self, per_second: int) -> None:
        self._per_second = per_second
        # Arrival times of the last `per_second` messages, oldest first. Made on the first
        # message: most watchers never send one, and an empty deque is 0.75 KiB each.
        self._arrivals: deque[float] | None = None

    def allow(self, now: float) -> bool:
        """Record a message at `now` (seconds); False when it is one too many for its second."""
        arrivals = self._arrivals
        if arrivals is None:
            arrivals = self._arrivals = deque(maxlen=self._per_second)
        full = len(arrivals) == arrivals.maxlen
        if full and now - arrivals[0] < 1.0:
            return False
        arrivals.append(now)
        return True
