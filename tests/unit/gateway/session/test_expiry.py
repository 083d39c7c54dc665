"""The replica's one timer for token expiry: on time, in order, and only for watched sessions."""

from __future__ import annotations

import time

from gateway.session.expiry import ExpiryClock
from tests.support.wait import async_wait_until


class Session:
    def __init__(self) -> None:
        self.expired_at: float | None = None

    def expired(self) -> None:
        self.expired_at = time.time()


def soon(seconds: float = 0.2) -> float:
    return time.time() + seconds


async def until_expired(*sessions: Session) -> None:
    async def all_expired() -> bool:
        return all(session.expired_at is not None for session in sessions)

    await async_wait_until(all_expired, timeout=5, what="sessions expired")


async def test_sessions_expire_after_their_exp_and_within_a_second() -> None:
    clock = ExpiryClock()
    first, second = Session(), Session()
    deadlines = {first: soon(0.2), second: soon(0.4)}
    for session, at in deadlines.items():
        clock.watch(session, at)
    await until_expired(first, second)
    for session, at in deadlines.items():
        assert session.expired_at is not None
        assert at <= session.expired_at <= at + 1.5
    clock.close()


async def test_an_earlier_expiry_is_not_held_up_by_a_later_one() -> None:
    """The timer is set for an hour away; a token expiring now still expires now."""
    clock = ExpiryClock()
    late, early = Session(), Session()
    clock.watch(late, time.time() + 3600)
    clock.watch(early, soon())
    await until_expired(early)
    assert late.expired_at is None
    clock.close()


async def test_forgotten_and_refreshed_sessions_do_not_expire_at_the_old_time() -> None:
    clock = ExpiryClock()
    gone, refreshed, witness = Session(), Session(), Session()
    for session in (gone, refreshed, witness):
        clock.watch(session, soon(0.2))
    clock.forget(gone)
    clock.watch(refreshed, time.time() + 3600)
    await until_expired(witness)
    assert gone.expired_at is None
    assert refreshed.expired_at is None
    clock.close()


async def test_close_stops_the_timer() -> None:
    clock = ExpiryClock()
    session = Session()
    clock.watch(session, time.time() + 3600)
    clock.close()
    assert clock._timer is None
    clock.forget(session)
    assert clock._buckets == {}
