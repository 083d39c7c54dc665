"""The test suite's own waiting helpers (tests/support/wait.py)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.wait import pause

pytestmark = pytest.mark.timeout(30)


async def test_pause_ends_when_stop_is_set_not_after_its_seconds() -> None:
    """A stop during a long pause ends it at once: load stops promptly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    loop.call_soon(stop.set)
    await pause(stop, 20.0)
    assert loop.time() - started < 5


async def test_pause_waits_its_seconds_while_not_stopped() -> None:
    """Without a stop, a pause lasts at least its seconds and raises nothing."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await pause(stop, 0.05)
    assert loop.time() - started >= 0.05
    assert not stop.is_set()
