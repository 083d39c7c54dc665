"""Capped exponential backoff with full jitter, so replicas do not reconnect in lockstep."""

from __future__ import annotations

import random


def full_jitter(attempt: int, base: float, cap: float) -> float:
    """A delay drawn uniformly from [0, min(cap, base * 2**attempt)]."""
    return random.uniform(0.0, min(cap, base * 2 ** min(attempt, 32)))
