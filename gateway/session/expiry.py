"""Token expiry for every session of a replica, on one timer."""

from __future__ import annotations

import time
from typing import Protocol

from gateway.wire.deadlines import Deadlines


class Expiring(Protocol):
    def expired(self) -> None: ...


class ExpiryClock(Deadlines[Expiring]):
    """Calls `expired()` within a second after a token's `exp` (on the wall clock, as `exp` is)."""

    def __init__(self) -> None:
        super().__init__(_expire, now=time.time, resolution=1.0)


def _expire(session: Expiring) -> None:
    session.expired()
