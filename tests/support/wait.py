"""Wait for a condition with a deadline instead of sleeping a guessed time."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.02


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(POLL_SECONDS)  # poll


async def async_wait_until(
    condition: Callable[[], Awaitable[T]], timeout: float = 10.0, what: str = "condition"
) -> T:
    """Await `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(POLL_SECONDS)  # poll


async def pause(stop: asyncio.Event, seconds: float) -> None:
    """Pace load: wait `seconds`, or only until `stop` is set, so a stop takes effect at once."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def scheduled_callbacks_run() -> None:
    """Return once every callback already scheduled with `call_soon` has run.

    The loop runs ready callbacks in order, so a future resolved by one more
    callback is done after all of them: a precise wait, not a guessed sleep.
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    loop.call_soon(done.set_result, None)
    await done
