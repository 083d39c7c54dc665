"""State reads shared by the subscribers of one event, against a real Redis.

The rule under test: a caller of `History.state` only ever gets a read that
Redis ran after the call began, however many callers share it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis

from gateway.fanin.history import History, HistoryClosed
from shared.channels import state_key
from tests.support.wait import async_wait_until


class GatedRedis:
    """A real client whose HMGETs are counted and can be held before they are sent."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._redis = redis
        self.sent = 0
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0

    async def holding_one(self) -> bool:
        return self.waiting == 1

    async def hmget(self, key: str, fields: list[str]) -> Any:
        self.waiting += 1
        await self.gate.wait()
        self.waiting -= 1
        self.sent += 1
        return await self._redis.hmget(key, fields)


async def set_state(redis: aioredis.Redis, event_id: int, seq: int, seats: int) -> None:
    await redis.hset(state_key(event_id), mapping={"seq": seq, "availableSeats": seats})


async def test_concurrent_callers_of_one_event_share_reads(redis: aioredis.Redis) -> None:
    """200 subscribers asking at once cost two reads at most, and all get the state."""
    await set_state(redis, 7, 3, 40)
    gated = GatedRedis(redis)
    history = History(gated)  # type: ignore[arg-type]
    states = await asyncio.gather(*(history.state(7) for _ in range(200)))
    assert {(s.seq, s.available_seats) for s in states} == {(3, 40)}
    assert gated.sent <= 2


async def test_a_caller_never_gets_a_read_sent_before_it_asked(redis: aioredis.Redis) -> None:
    """A read in flight answers only its own callers; a later caller sees a later change."""
    await set_state(redis, 8, 1, 50)
    gated = GatedRedis(redis)
    history = History(gated)  # type: ignore[arg-type]
    gated.gate.clear()
    first = asyncio.create_task(history.state(8))
    await async_wait_until(gated.holding_one)
    # Published after the first read was under way, before the second caller asked.
    await set_state(redis, 8, 2, 49)
    second = asyncio.create_task(history.state(8))

    async def second_queued() -> bool:
        return bool(history._queued.get(8))

    await async_wait_until(second_queued)
    gated.gate.set()
    assert (await first).seq in (1, 2)
    assert (await second).seq == 2
    assert gated.sent == 2


async def test_events_are_read_separately(redis: aioredis.Redis) -> None:
    """Callers of different events never share a read."""
    await set_state(redis, 1, 5, 10)
    await set_state(redis, 2, 6, 20)
    history = History(redis)
    one, two, none = await asyncio.gather(history.state(1), history.state(2), history.state(3))
    assert (one.seq, two.seq, none.seq) == (5, 6, None)


async def test_a_cancelled_caller_leaves_the_others_their_answer(redis: aioredis.Redis) -> None:
    """Cancelling one caller of a shared read does not cancel the read."""
    await set_state(redis, 9, 4, 30)
    gated = GatedRedis(redis)
    history = History(gated)  # type: ignore[arg-type]
    gated.gate.clear()
    callers = [asyncio.create_task(history.state(9)) for _ in range(3)]
    await async_wait_until(gated.holding_one)
    callers[0].cancel()
    gated.gate.set()
    assert [(await caller).seq for caller in callers[1:]] == [4, 4]
    with pytest.raises(asyncio.CancelledError):
        await callers[0]


async def test_a_failed_read_fails_its_callers_and_the_next_read_works(
    redis: aioredis.Redis,
) -> None:
    """A Redis error reaches every caller of that read; later callers get a fresh read."""
    await set_state(redis, 4, 2, 10)
    gated = GatedRedis(redis)
    history = History(gated)  # type: ignore[arg-type]
    real_hmget = gated.hmget

    async def broken(key: str, fields: list[str]) -> Any:
        raise ConnectionError("redis went away")

    gated.hmget = broken  # type: ignore[method-assign]
    results = await asyncio.gather(history.state(4), history.state(4), return_exceptions=True)
    assert all(isinstance(result, ConnectionError) for result in results)
    gated.hmget = real_hmget  # type: ignore[method-assign]
    assert (await history.state(4)).seq == 2


async def test_closing_answers_waiting_callers_and_leaves_no_task(redis: aioredis.Redis) -> None:
    """`aclose` during a read: its callers get HistoryClosed, and no reader task is left."""
    gated = GatedRedis(redis)
    history = History(gated)  # type: ignore[arg-type]
    gated.gate.clear()
    caller = asyncio.create_task(history.state(5))
    await async_wait_until(gated.holding_one)
    await history.aclose()
    with pytest.raises(HistoryClosed):
        await caller
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("state-")]
