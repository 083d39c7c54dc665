"""asyncio helpers both processes use."""

from __future__ import annotations

import asyncio


def raise_if_cancelling() -> None:
    """Re-raise a cancellation that a library swallowed.

    redis-py's asyncio client (its `wait_for` on Python 3.11) can lose a
    `CancelledError` that lands inside its connection handling
    (redis/redis-py#2028, #2551), and on 3.11 a task group whose child fails
    folds its parent's cancellation into an exception group. The task still
    counts the request in `cancelling()`, so loops that must stop check it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
