"""Token expiry for every session of a replica, on one timer.

A `call_later` per connection is a timer handle plus a libuv timer kept for
the token's whole life: about 0.8 KiB of every idle client (issue 4's memory
profile). Sessions go into one-second buckets instead, and one timer, set
only while any session is watched, closes what is due. A session is closed
at most a second after its token's `exp`.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Protocol


class Expiring(Protocol):
    def expired(self) -> None: ...


class ExpiryClock:
    """Call `expired()` on each watched session once its second has passed."""

    def __init__(self) -> None:
        # Whole second (epoch) -> the sessions expiring within it.
        self._buckets: dict[int, set[Expiring]] = {}
        # The session -> its bucket, to move or drop it.
        self._bucket_of: dict[Expiring, int] = {}
        self._timer: asyncio.TimerHandle | None = None
        # The second the timer is set for; None while no timer is set.
        self._next: int | None = None

    def watch(self, session: Expiring, expires_at: float) -> None:
        """Expire `session` at `expires_at` (epoch seconds), replacing any earlier watch."""
        self.forget(session)
        second = math.ceil(expires_at)
        self._buckets.setdefault(second, set()).add(session)
        self._bucket_of[session] = second
        if self._next is None or second < self._next:
            self.close()
            self._schedule()

    def forget(self, session: Expiring) -> None:
        second = self._bucket_of.pop(session, None)
        if second is None:
            return
        bucket = self._buckets[second]
        bucket.discard(session)
        if not bucket:
            del self._buckets[second]

    def close(self) -> None:
        """Stop the timer; nothing is expired any more."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._next = None

    def _schedule(self) -> None:
        if not self._buckets:
            self._timer = self._next = None
            return
        self._next = min(self._buckets)
        delay = max(0.0, self._next - time.time())
        self._timer = asyncio.get_running_loop().call_later(delay, self._tick)

    def _tick(self) -> None:
        now = time.time()
        for second in sorted(s for s in self._buckets if s <= now):
            for session in self._buckets.pop(second):
                del self._bucket_of[session]
                session.expired()
        self._schedule()
