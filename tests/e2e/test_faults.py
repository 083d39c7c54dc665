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
from dataclasses import dataclass

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
    diagnostics,
    event_state,
    reaches,
    report,
    until,
)

pytestmark = pytest.mark.timeout(180)

WATCHERS_PER_REPLICA = 25
# Faults injected one after the other with --long.
LONG_ROUNDS = 5
# Seconds between booking requests: ~30 changes a second, each fanned out to every watcher.
BOOKING_INTERVAL = 0.03
Start = Callable[..., ServiceProcess]


@dataclass
class Flow:
    """Bookings flowing on one event, watched through the gateway replicas."""

    api: ServiceProcess
    gateways: list[ServiceProcess]
    event_id: int
    watchers: Watchers
    load: BookingLoad
    # The task running `load`; None once it was awaited.
    booking: asyncio.Task[None] | None

    def explain(self) -> str:
        return diagnostics(self.watchers, [self.api, *self.gateways])()

    async def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        await until(check, timeout, what, self.explain)

    async def stop_booking(self) -> None:
        self.load.stop()
        if self.booking is not None:
            await self.booking
            self.booking = None

    async def finish(self) -> None:
        """Stop booking, wait for every watcher to reach the final seq, check exactly-once."""
        await self.stop_booking()
        final = await event_state(self.api.http_url, self.event_id)
        await self.until(lambda: self.watchers.all_reached(final["seq"]), 60, f"all at {final}")
        await self.watchers.stop()
        self.watchers.assert_exactly_once(final["seq"], final["availableSeats"])


async def _start_flow(
    api: ServiceProcess, gateways: list[ServiceProcess], token: Callable[..., str]
) -> Flow:
    """An event, watchers spread over the replicas (each knows every replica, its own
    first), bookings flowing until 15 changes were seen."""
    event_id = await create_event(api.http_url, token(1, admin=True))
    urls = [g.ws_url for g in gateways]
    watchers = Watchers(
        [
            RecordingWatcher(urls[i:] + urls[:i], token(200 + n), event_id)
            for i in range(len(gateways))
            for n in range(WATCHERS_PER_REPLICA)
        ]
    ).start()
    users = [token(300 + n) for n in range(6)]
    load = BookingLoad(api.http_url, users, event_id, interval=BOOKING_INTERVAL)
    flow = Flow(api, gateways, event_id, watchers, load, None)
    await flow.until(watchers.all_subscribed, 30, "watchers subscribed")
    flow.booking = asyncio.create_task(load.run())
    await flow.until(lambda: watchers.min_seq() >= 15, 30, "15 changes delivered")
    return flow


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
    flow = await _start_flow(api, gateways, token)
    watchers, load = flow.watchers, flow.load

    for _ in range(LONG_ROUNDS if request.config.getoption("--long") else 1):
        await asyncio.to_thread(redis_server.stop)
        stopped_at, seen = time.monotonic(), watchers.max_seq()
        await flow.until(reaches(lambda: load.changes, seen + 10), 30, "bookings, Redis down")
        await asyncio.to_thread(redis_server.start)
        started_at = time.monotonic()
        await flow.until(reaches(watchers.min_seq, seen + 20), 60, "changes after the restart")
        report(
            "Redis restart -> first message delivered again (from Redis up)",
            watchers.first_arrival_above(seen) - started_at,
        )
        report("Redis down for", started_at - stopped_at)
    await flow.finish()
    assert load.failures == []


async def test_gateway_killed_mid_stream_its_clients_recover_elsewhere(
    service: Start, database_url: str, redis_url: str, token: Callable[..., str]
) -> None:
    """A replica is SIGKILLed mid-stream: its clients reconnect to the other one with
    `since` and end with every seq once, in order."""
    env = {"REDIS_URL": redis_url}
    gateways = [service("gateway", env) for _ in range(2)]
    api = service("booking_api", {**env, "DATABASE_URL": database_url})
    flow = await _start_flow(api, gateways, token)
    watchers = flow.watchers
    victims = [w for w in watchers.watchers if w.urls[0] == gateways[0].ws_url]

    gateways[0].kill()
    killed_at = time.monotonic()
    await flow.until(lambda: all(w.close_codes and w.subscribed for w in victims), 30, "back")
    report(
        "gateway SIGKILL -> all its clients resubscribed elsewhere",
        max(w.subscribed_at[-1] for w in victims) - killed_at,
    )
    seen = watchers.max_seq()
    await flow.until(lambda: watchers.min_seq() >= seen + 10, 30, "changes after the kill")
    await flow.finish()
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
    flow = await _start_flow(api, gateways, token)
    watchers, load = flow.watchers, flow.load

    await asyncio.to_thread(private_postgres.stop)
    stopped_at = time.monotonic()
    await flow.until(lambda: len(load.failures) >= 20, 30, "requests refused, PostgreSQL down")
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
    await flow.until(lambda: load.changes >= down_changes + 10, 60, "bookings succeed again")
    await flow.until(lambda: watchers.min_seq() > seen, 30, "new changes delivered")
    report(
        "PostgreSQL start -> first new change delivered",
        watchers.first_arrival_above(seen) - started_at,
    )
    await flow.finish()
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
    flow = await _start_flow(api, gateways, token)
    watchers, load = flow.watchers, flow.load

    await asyncio.to_thread(redis_server.stop)
    committed = load.changes
    await flow.until(lambda: load.changes >= committed + 10, 30, "bookings committed, unpublished")
    await flow.stop_booking()
    unpublished = await event_state(api.http_url, flow.event_id)
    api.signal(signal.SIGKILL)
    await asyncio.to_thread(api.wait, 10)
    await asyncio.to_thread(redis_server.start)
    assert watchers.max_seq() < unpublished["seq"]

    started_at = time.monotonic()
    flow.api = await asyncio.to_thread(service, "booking_api", api_env)
    await flow.until(lambda: watchers.all_reached(unpublished["seq"]), 60, "outbox published")
    report("API process start -> committed changes delivered", time.monotonic() - started_at)
    flow.load = BookingLoad(flow.api.http_url, [token(400 + n) for n in range(4)], flow.event_id)
    await flow.load.run(limit=10)
    await flow.finish()
