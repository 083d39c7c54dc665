"""Lean stand-ins for the asyncio.Queue and asyncio.Event uvicorn keeps per connection.

uvicorn's WebSocket protocol holds an `asyncio.Queue` of ASGI receive events
(three deques) and an `asyncio.Event` for write flow control (one more deque)
for each connection's whole life: 3.8 KiB of every idle client in issue 4's
memory profile, about a fifth of it. The protocol uses `put_nowait`, `get`
and `empty` of the one, `set`, `clear` and `wait` of the other; these give
exactly that, with one consumer, on lists and a future made only while
someone waits. `tests/test_gateway_mailbox.py` pins the behaviour.

A consumer that would rather not wait in a task `listen`s instead: it is
called as items arrive and `take`s them (gateway/fastws.py, `listen`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A FIFO for one consumer: `put_nowait`, `get` or `listen` and `take`, `empty`."""

    __slots__ = ("_items", "_listener", "_waiter")

    def __init__(self) -> None:
        self._items: list[T] = []
        # The consumer's future while it waits in `get`; None otherwise.
        self._waiter: asyncio.Future[None] | None = None
        # Called after each `put_nowait` nobody waits for in `get`; None: nobody listens.
        self._listener: Callable[[], None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        elif self._listener is not None:
            self._listener()

    def listen(self, listener: Callable[[], None] | None) -> None:
        """Call `listener` as items arrive, and once now if some are here; None stops it."""
        self._listener = listener
        if listener is not None and self._items:
            listener()

    @property
    def listened(self) -> bool:
        return self._listener is not None

    def take(self) -> T | None:
        """The first item, or None when there is none: never waits."""
        return self._items.pop(0) if self._items else None

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        # Lists stay a few items long here: popping the front is cheap.
        return self._items.pop(0)


class Flag:
    """An event flag: `set`, `clear`, `is_set`, `wait`; waiters' futures made on demand."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True
