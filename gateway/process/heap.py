"""The cyclic garbage collector, tuned for a process holding thousands of connections.

A replica holds tens of objects the collector tracks per connection for the
connection's whole life. With CPython's default thresholds (700, 10, 10) a
ramp of thousands of connects runs several full collections, each walking
every connection: a share of every connect's CPU, and a stall for every
delivery in flight. Young
collections are made rarer, full ones about 60 times rarer, and what startup built
(modules, the app) is moved out of the collector's sight once serving begins.
Garbage cycles left by closed connections are still collected, later.
"""

from __future__ import annotations

import gc
from typing import Final

# Allocations between young collections, then young collections per middle one and
# middle ones per full one: full collections come every ~4M allocations instead of
# every 70k, and still often enough that the cycles closed connections leave behind
# do not pile up under churn (tests/e2e/test_soak.py).
THRESHOLDS: Final = (20_000, 20, 10)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)


def freeze_startup_heap() -> None:
    """Collect once, then exempt every object alive now from all later collections."""
    gc.collect()
    gc.freeze()
