"""A replica's life: start-up errors, SIGTERM drains, Redis restarts, worker processes, logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis

from shared.messages import SeatChange, utc_now_iso
from shared.publisher import Publisher
from tests.conftest import JWT_SECRET
from tests.support.processes import ROOT, ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import async_wait_until
from tests.support.ws_client import WsClient

Start = Callable[..., ServiceProcess]


def change(event_id: int, seq: int) -> SeatChange:
    return SeatChange(
        "booking_created", event_id, f"BK-{seq:06x}", 7, 1, 100 - seq, seq, utc_now_iso()
    )


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"JWT_SECRET": ""}, "JWT_SECRET"),
        ({"JWT_SECRET": "short"}, "JWT_SECRET"),
        ({"MAX_SUBSCRIPTIONS": "lots"}, "MAX_SUBSCRIPTIONS"),
        ({"MAX_CONNECTIONS": "0"}, "MAX_CONNECTIONS"),
        ({"DRAIN_SECONDS": "-1"}, "DRAIN_SECONDS"),
        ({"SOCKET_TRANSPORT": "asyncio"}, "SOCKET_TRANSPORT"),
        ({"ALLOWED_ORIGINS": "evil"}, "ALLOWED_ORIGINS"),
        ({"REDIS_URL": "http://localhost"}, "REDIS_URL"),
        (
            {"JWT_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----"},
            "JWT_PUBLIC_KEY",
        ),
        ({"PORT": "70000"}, "PORT"),
        # pyjwt refuses a key-shaped HMAC secret: at start, not on every token.
        (
            {"JWT_SECRET": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
            "JWT_SECRET",
        ),
    ],
)
def test_bad_settings_stop_with_one_line(env: dict[str, str], names: str) -> None:
    """A bad setting: exit status 2 and one line on stderr naming the variable, no traceback."""
    full_env = {**os.environ, "JWT_SECRET": JWT_SECRET, "PYTHONPATH": str(ROOT), **env}
    result = subprocess.run(
        [sys.executable, "-m", "gateway"],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seatcast: ")
    assert names in lines[0]


async def test_sigterm_drains_with_1012_and_exits_zero(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """SIGTERM: /readyz 503 at once, every client closed 1012 spread over DRAIN_SECONDS, exit 0 within it."""
    drain_seconds = 2.0
    gateway = service("gateway", {"REDIS_URL": redis_url, "DRAIN_SECONDS": str(drain_seconds)})
    clients = [await WsClient.open(gateway.ws_url, "/ws/events/3", token(n)) for n in range(6)]
    for client in clients:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")

    async def close_time(client: WsClient) -> tuple[float, tuple[int | None, str]]:
        closed = await client.closed(timeout=drain_seconds + 5)
        return time.monotonic(), closed

    waiting = [asyncio.create_task(close_time(client)) for client in clients]
    signalled = time.monotonic()
    gateway.signal(signal.SIGTERM)
    async with httpx.AsyncClient(base_url=gateway.http_url) as http:

        async def not_ready() -> bool:
            return (await http.get("/readyz")).status_code == 503

        await async_wait_until(not_ready, timeout=0.5, what="/readyz 503")
    results = await asyncio.gather(*waiting)
    for client in clients:
        await client.close()
    assert {closed for _, closed in results} == {
        (1012, "Server shutting down, reconnect elsewhere")
    }
    times = sorted(at - signalled for at, _ in results)
    assert times[-1] - times[0] >= drain_seconds * 0.25, times  # spread, not all at once
    code = await asyncio.to_thread(gateway.wait, drain_seconds + 5)
    assert code == 0
    # The process is gone within the window (plus a little for a loaded machine).
    assert time.monotonic() - signalled < drain_seconds + 1.0


async def test_sigterm_without_connections_exits_at_once(service: Start, redis_url: str) -> None:
    """With nobody connected there is nothing to drain: the replica exits 0 right away."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "DRAIN_SECONDS": "30"})
    started = time.monotonic()
    gateway.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gateway.wait, 10) == 0
    assert time.monotonic() - started < 5


async def test_redis_restart_mid_stream_loses_nothing(
    service: Start,
    redis_server: RedisServer,
    redis: aioredis.Redis,
    token: Callable[..., str],
) -> None:
    """Redis restarts (empty) while a client watches; messages before, right after and later all arrive."""
    gateway = service("gateway", {"REDIS_URL": redis_server.url})
    publisher = Publisher(redis)
    async with await WsClient.open(gateway.ws_url, "/ws/events/12", token(1)) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        for seq in range(1, 6):
            await publisher.publish(change(12, seq))
        await asyncio.to_thread(redis_server.restart)
        for seq in range(6, 11):  # right after the restart, before the replica is back
            await publisher.publish(change(12, seq))

        async def ready() -> bool:
            response = await asyncio.to_thread(httpx.get, gateway.http_url + "/readyz")
            return response.status_code == 200

        await async_wait_until(ready, timeout=20, what="ready after the restart")
        for seq in range(11, 16):
            await publisher.publish(change(12, seq))
        got = await client.collect(lambda m: bool(m) and m[-1].get("seq") == 15, timeout=20)
        assert [m["seq"] for m in got] == list(range(1, 16))


async def test_tokens_never_reach_the_logs(
    service: Start, redis_url: str, token: Callable[..., str]
) -> None:
    """Tokens in the query string, the header, refresh messages and refused handshakes are never logged."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "LOG_LEVEL": "debug"})
    used = [token(1), token(1, ttl_seconds=7200), token(3), token(4, ttl_seconds=-5)]
    async with await WsClient.open(gateway.ws_url, "/ws/events/4", used[0]) as client:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
        await client.send_json({"type": "refresh_token", "token": used[1]})
        await client.recv_type("token_refreshed")
        await client.send_json({"type": "refresh_token", "token": "not-a-jwt-" + used[1][-20:]})
        await client.recv_type("error")
    headers = {"Authorization": f"Bearer {used[2]}"}
    async with await WsClient.open(gateway.ws_url, "/ws", headers=headers) as client:
        await client.recv_type("connection_established")
    refused = await WsClient.open(gateway.ws_url, "/ws", used[3])
    await refused.closed()
    await asyncio.to_thread(httpx.get, f"{gateway.http_url}/readyz?token={used[0]}")
    gateway.stop()
    logs = gateway.logs()
    assert "WebSocket /ws" in logs  # the access lines are there, redacted
    for secret in used:
        assert secret not in logs
        assert secret.split(".")[2] not in logs
    assert "eyJ" not in logs


async def test_workers_share_the_port(
    service: Start, redis_url: str, redis: aioredis.Redis, token: Callable[..., str]
) -> None:
    """WORKERS=2 runs two replica processes on one port; each delivers; SIGTERM stops all with 0."""
    gateway = service("gateway", {"REDIS_URL": redis_url, "WORKERS": "2", "DRAIN_SECONDS": "1"})
    clients = [await WsClient.open(gateway.ws_url, "/ws/events/5", token(n)) for n in range(8)]
    for client in clients:
        await client.recv_type("connection_established")
        await client.recv_type("subscribed")
    publisher = Publisher(redis)
    for seq in (1, 2):
        await publisher.publish(change(5, seq))
    for client in clients:
        assert [m["seq"] for m in await client.collect(lambda m: len(m) == 2)] == [1, 2]
    assert gateway.process is not None
    assert len(await asyncio.to_thread(_workers_of, gateway.process.pid)) == 2
    # At most one subscription per worker, however many clients (the kernel spreads them).
    channels = await redis.pubsub_numsub("booking:event:{5}")
    assert 1 <= channels[0][1] <= 2
    gateway.signal(signal.SIGTERM)
    for client in clients:
        assert (await client.closed())[0] == 1012
        await client.close()
    assert await asyncio.to_thread(gateway.wait, 15) == 0


def _workers_of(pid: int) -> list[int]:
    """The worker processes the gateway spawned (not multiprocessing's resource tracker)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(child)
        for child in children
        if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()
        and b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
