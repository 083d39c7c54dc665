"""The lean queue and flag that replace uvicorn's per-connection asyncio.Queue and Event."""

from __future__ import annotations

import asyncio

import pytest

from gateway.mailbox import Flag, Mailbox
from tests.support.wait import scheduled_callbacks_run


async def test_mailbox_is_first_in_first_out() -> None:
    """Items come out of `get` in the order they were put."""
    box: Mailbox[int] = Mailbox()
    assert box.empty()
    for item in (1, 2, 3):
        box.put_nowait(item)
    assert not box.empty()
    assert [await box.get() for _ in range(3)] == [1, 2, 3]
    assert box.empty()


async def test_a_waiting_get_wakes_on_put() -> None:
    """A `get` waiting on an empty mailbox returns the next item put."""
    box: Mailbox[str] = Mailbox()
    getter = asyncio.create_task(box.get())
    await scheduled_callbacks_run()
    assert not getter.done()
    box.put_nowait("connect")
    assert await asyncio.wait_for(getter, timeout=5) == "connect"


async def test_a_cancelled_get_loses_no_item() -> None:
    """An item put while the getter is being cancelled stays for the next get."""
    box: Mailbox[str] = Mailbox()
    getter = asyncio.create_task(box.get())
    await scheduled_callbacks_run()
    box.put_nowait("disconnect")
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getter
    assert await asyncio.wait_for(box.get(), timeout=5) == "disconnect"


def test_a_listener_is_called_per_item_and_takes_them_in_order() -> None:
    """A listener is called for items already there and for each new one, `take` returns them in
    order then None, and `listen(None)` stops the calls."""
    box: Mailbox[str] = Mailbox()
    box.put_nowait("connect")
    calls: list[list[str]] = []

    def listener() -> None:
        calls.append([])

    box.listen(listener)  # an item is already here: called at once
    assert calls == [[]]
    assert box.listened
    box.put_nowait("a")
    box.put_nowait("b")
    assert len(calls) == 3
    assert [box.take(), box.take(), box.take(), box.take()] == ["connect", "a", "b", None]
    box.listen(None)
    box.put_nowait("c")
    assert len(calls) == 3
    assert not box.listened
    assert box.take() == "c"


async def test_a_waiting_get_comes_before_the_listener() -> None:
    """An item put while `get` waits goes to it, and the listener is not called."""
    box: Mailbox[str] = Mailbox()
    called: list[None] = []
    box.listen(lambda: called.append(None))
    getter = asyncio.create_task(box.get())
    await scheduled_callbacks_run()
    box.put_nowait("x")
    assert await asyncio.wait_for(getter, timeout=5) == "x"
    assert called == []


async def test_flag_waits_until_set_and_passes_while_set() -> None:
    """`wait` blocks until the flag is set and returns at once while it stays set."""
    flag = Flag()
    assert not flag.is_set()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await scheduled_callbacks_run()
    assert not any(waiter.done() for waiter in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), timeout=5) == [True] * 3
    assert await flag.wait() is True
    flag.clear()
    assert not flag.is_set()


async def test_a_cancelled_flag_wait_leaves_the_others() -> None:
    """Cancelling one `wait` does not disturb the others."""
    flag = Flag()
    gone, stays = asyncio.create_task(flag.wait()), asyncio.create_task(flag.wait())
    await scheduled_callbacks_run()
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    flag.set()
    assert await asyncio.wait_for(stays, timeout=5) is True
