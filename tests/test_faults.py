"""Faults while bookings flow, each with nothing lost: Redis restarted, a gateway replica
killed, PostgreSQL restarted, a booking API killed between commit and publish.

In each, watchers that reconnect like the browser client (resubscribing with
`since`) end with every seq exactly once, in order, and their last
`availableSeats` equals the database's. Recovery times are printed
(`pytest -s`) as `RECOVERY …` lines.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.support.faults import PrivatePostgres, private_postgres_skip_reason
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until
from tests.support.watching import (
    BookingLoad,
    RecordingWatcher,
    Watchers,
    create_event,
    event_state,
    reaches,
    report,
)

pytestmark = pytest.mark.timeout(180)

WATCHERS_PER_REPLICA = 25
# Faults injected one after the other with --long.
LONG_ROUNDS = 5
# Seconds between booking requests: ~30 changes a second, each fanned out to every watcher.
BOOKING_INTERVAL = 0.03
Start = Callable[..., ServiceProcess]


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    async def condition() -> bool:
        return check()

    await async_wait_until(condition, timeout=timeout, what=what)


def _watchers(gateways: list[ServiceProcess], token: Callable[..., str], event_id: int) -> Watchers:
    """Watchers spread over the replicas; each knows every replica, its own first."""
    urls = [g.ws_url for g in gateways]
    return Watchers(
        [
            RecordingWatcher(urls[i:] + urls[:i], token(200 + n), event_id)
            for i in range(len(gateways))
            for n in range(WATCHERS_PER_REPLICA)
        ]
    )


async def _start_flow(
    api: ServiceProcess, gateways: list[ServiceProcess], token: Callable[..., str]
) -> tuple[int, Watchers, BookingLoad, asyncio.Task[None]]:
    """An event, watchers subscribed to it, bookings flowing until 15 changes were seen."""
    event_id = await create_event(api.http_url, token(1, admin=True))
    watchers = _watchers(gateways, token, event_id).start()
    await _until(watchers.all_subscribed, 30, "watchers subscribed")
    users = [token(300 + n) for n in range(6)]
    load = BookingLoad(api.http_url, users, event_id, interval=BOOKING_INTERVAL)
    booking = asyncio.create_task(load.run())
    await _until(lambda: watchers.min_seq() >= 15, 30, "15 changes delivered")
    return event_id, watchers, load, booking


async def _finish(
    watchers: Watchers,
    load: BookingLoad,
    api_url: str,
    event_id: int,
    booking: asyncio.Task[None] | None = None,
) -> None:
    """Stop booking, wait for every watcher to reach the final seq, check exactly-once."""
    load.stop()
    if booking is not None:
        await booking
    final = await event_state(api_url, event_id)
    await _until(lambda: watchers.all_reached(final["seq"]), 60, f"every watcher at {final}")
    await watchers.stop()
    watchers.assert_exactly_once(final["seq"], final["availableSeats"])


async def test_redis_restart_while_bookings_flow_loses_nothing(
    request: pytest.FixtureRequest,
    service: Start,
    database_url: str,
    redis_server: RedisServer,
    token: Callable[..., str],
) -> None:
    """Redis stops and comes back empty while bookings flow (five times with --long):
    bookings keep succeeding, and watchers on both replicas still get every seq once, in
    order (history refills the gap)."""
    env = {"REDIS_URL": redis_server.url}
    gateways = [service("gateway", env) for _ in range(2)]
    api = service("booking_api", {**env, "DATABASE_URL": database_url})
    event_id, watchers, load, booking = await _start_flow(api, gateways, token)

    for _ in range(LONG_ROUNDS if request.config.getoption("--long") else 1):
        await asyncio.to_thread(redis_server.stop)
        stopped_at, seen = time.monotonic(), watchers.max_seq()
        await _until(reaches(lambda: load.changes, seen + 10), 30, "bookings while Redis is down")
        await asyncio.to_thread(redis_server.start)
        started_at = time.monotonic()
        try:
            await _until(reaches(watchers.min_seq, seen + 20), 30, "changes after the restart")
        except TimeoutError:
            import collections
            print("DEBUG seen", seen, "changes", load.changes, "failures", load.failures[-5:])
            print("DEBUG last seqs", collections.Counter(w.last_seq for w in watchers.watchers))
            print("DEBUG codes", collections.Counter(str(w.close_codes) for w in watchers.watchers))
            print("DEBUG errors", [w.errors for w in watchers.watchers if w.errors][:5])
            print("DEBUG subscribed", sum(w.subscribed for w in watchers.watchers))
            for g in gateways:
                print("DEBUG GW", "\n".join(l for l in g.logs().splitlines() if "access" not in l and "connection open" not in l and "accepted" not in l and "connection closed" not in l)[-5000:])
            print("DEBUG API", "\n".join(l for l in api.logs().splitlines() if "access" not in l)[-5000:])
            raise
        report(
            "Redis restart -> first message delivered again (from Redis up)",
            watchers.first_arrival_above(seen) - started_at,
        )
        report("Redis down for", started_at - stopped_at)
    await _finish(watchers, load, api.http_url, event_id, booking)
    assert load.failures == []


async def test_gateway_killed_mid_stream_its_clients_recover_elsewhere(
    service: Start, database_url: str, redis_url: str, token: Callable[..., str]
) -> None:
    """A replica is SIGKILLed mid-stream: its clients reconnect to the other one with
    `since` and end with every seq once, in order."""
    env = {"REDIS_URL": redis_url}
    gateways = [service("gateway", env) for _ in range(2)]
    api = service("booking_api", {**env, "DATABASE_URL": database_url})
    event_id, watchers, load, booking = await _start_flow(api, gateways, token)
    victims = [w for w in watchers.watchers if w.urls[0] == gateways[0].ws_url]

    gateways[0].kill()
    killed_at = time.monotonic()
    await _until(lambda: all(w.close_codes and w.subscribed for w in victims), 30, "reconnects")
    report(
        "gateway SIGKILL -> all its clients resubscribed elsewhere",
        max(w.subscribed_at[-1] for w in victims) - killed_at,
    )
    seen = watchers.max_seq()
    await _until(lambda: watchers.min_seq() >= seen + 10, 30, "changes after the kill")
    await _finish(watchers, load, api.http_url, event_id, booking)
    assert {w.close_codes[0] for w in victims} == {None}  # no close frame: the process died


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    reason = private_postgres_skip_reason()
    if reason is not None:
        pytest.skip(reason)
    server = PrivatePostgres().init()
    server.start()
    yield server
    server.close()


async def test_postgres_restart_gives_503_then_recovers_by_itself(
    service: Start,
    private_postgres: PrivatePostgres,
    redis_url: str,
    token: Callable[..., str],
) -> None:
    """PostgreSQL stops while bookings flow: the API answers 503 `unavailable` quickly (no
    request hangs), reports not ready, and serves again by itself once the database is
    back; watchers get every committed change once."""
    env = {"REDIS_URL": redis_url}
    gateways = [service("gateway", env)]
    api = service("booking_api", {**env, "DATABASE_URL": private_postgres.url})
    event_id, watchers, load, booking = await _start_flow(api, gateways, token)

    await asyncio.to_thread(private_postgres.stop)
    stopped_at = time.monotonic()
    await _until(lambda: len(load.failures) >= 20, 30, "requests refused while PostgreSQL is down")
    async with httpx.AsyncClient(base_url=api.http_url, timeout=10) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "not_ready"
        listed = await client.get("/api/events")
        assert listed.status_code == 503
        assert listed.json()["error"] == {
            "code": "unavailable",
            "message": "the database does not answer; retry later",
        }
        down_changes, seen = load.changes, watchers.max_seq()

        started_at = time.monotonic()
        await asyncio.to_thread(private_postgres.start)
        await async_wait_until(lambda: _ready(client), timeout=30, what="API ready again")
    report("PostgreSQL start -> API ready again", time.monotonic() - started_at)
    report("PostgreSQL down for", started_at - stopped_at)
    await _until(lambda: load.changes >= down_changes + 10, 60, "bookings succeed again")
    await _until(lambda: watchers.min_seq() > seen, 30, "new changes delivered")
    report(
        "PostgreSQL start -> first new change delivered",
        watchers.first_arrival_above(seen) - started_at,
    )
    await _finish(watchers, load, api.http_url, event_id, booking)
    assert set(load.failures) == {(503, "unavailable")}, load.failures
    assert load.slowest < 5.0


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/readyz")).status_code == 200


async def test_api_killed_between_commit_and_publish_publishes_after_restart(
    service: Start,
    database_url: str,
    redis_server: RedisServer,
    token: Callable[..., str],
) -> None:
    """Bookings are committed while Redis is unreachable, then the API is SIGKILLed before
    it could publish them: a new API process publishes them from the outbox, in order, and
    the watchers (connected all along) get every seq once."""
    env = {"REDIS_URL": redis_server.url}
    gateways = [service("gateway", env) for _ in range(2)]
    api_env = {**env, "DATABASE_URL": database_url}
    api = service("booking_api", api_env)
    event_id, watchers, load, booking = await _start_flow(api, gateways, token)

    await asyncio.to_thread(redis_server.stop)
    committed = load.changes
    await _until(lambda: load.changes >= committed + 10, 30, "bookings committed, unpublished")
    load.stop()
    await booking
    unpublished = await event_state(api.http_url, event_id)
    api.signal(signal.SIGKILL)
    await asyncio.to_thread(api.wait, 10)
    await asyncio.to_thread(redis_server.start)
    assert watchers.max_seq() < unpublished["seq"]

    started_at = time.monotonic()
    restarted = await asyncio.to_thread(service, "booking_api", api_env)
    try:
        await _until(lambda: watchers.all_reached(unpublished["seq"]), 30, "the outbox published")
    except TimeoutError:
        import collections
        print("DEBUG2 unpublished", unpublished)
        print("DEBUG2 last seqs", collections.Counter(w.last_seq for w in watchers.watchers))
        print("DEBUG2 codes", collections.Counter(str(w.close_codes) for w in watchers.watchers))
        print("DEBUG2 errors", [w.errors for w in watchers.watchers if w.errors][:5])
        for g in gateways:
            print("DEBUG2 GW", "\n".join(l for l in g.logs().splitlines() if "access" not in l and "connection open" not in l and "accepted" not in l and "connection closed" not in l)[-5000:])
        print("DEBUG2 API", "\n".join(l for l in restarted.logs().splitlines() if "access" not in l)[-5000:])
        raise
    report("API process start -> committed changes delivered", time.monotonic() - started_at)
    load = BookingLoad(restarted.http_url, [token(400 + n) for n in range(4)], event_id)
    await load.run(limit=10)
    await _finish(watchers, load, restarted.http_url, event_id)
