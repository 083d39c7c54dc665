"""Capped exponential backoff with full jitter, so replicas do not reconnect in lockstep."""

from __future__ import annotations

import random
from collections.abc import Callable


def full_jitter(
    attempt: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """A delay drawn uniformly from [0, min(cap, base * 2**attempt)]."""
    ceiling: float = min(cap, base * 2 ** min(max(0, attempt), 32))
    return rand() * ceiling
