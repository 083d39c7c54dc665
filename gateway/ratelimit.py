"""At most N client messages in any one second (a sliding log)."""

from __future__ import annotations

from collections import deque


class RateLimit:
    def __init__(self, per_second: int) -> None:
        # Arrival times of the last `per_second` messages, oldest first.
        self._arrivals: deque[float] = deque(maxlen=per_second)

    def allow(self, now: float) -> bool:
        """Record a message at `now` (seconds); False when it is one too many for its second."""
        arrivals = self._arrivals
        full = len(arrivals) == arrivals.maxlen
        if full and now - arrivals[0] < 1.0:
            return False
        arrivals.append(now)
        return True
