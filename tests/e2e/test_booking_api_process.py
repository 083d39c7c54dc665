"""The real `python -m booking_api` process: start-up checks, probes, metrics, CORS, logs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

import asyncpg
import httpx
import pytest

from booking_api import migrations
from tests.support.api_client import bearer, running_app, settings_for
from tests.support.ports import free_port
from tests.support.processes import ROOT, ServiceProcess
from tests.support.redis_server import RedisServer
from tests.support.wait import wait_until

pytestmark = pytest.mark.timeout(90)

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!"


def run_api(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run the API with exactly these settings (plus PATH) and wait for it to stop."""
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "PORT": str(free_port()),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "booking_api"],
        env=full_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_refused(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("seatcast: ")
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize(
    ("url", "needles"),
    [
        ("mysql://localhost/x", ("DATABASE_URL",)),
        (
            "postgresql://postgres@127.0.0.1:{closed}/x",
            ("cannot connect to PostgreSQL at postgresql://postgres@127.0.0.1:",),
        ),
        ("postgresql://postgres:hunter2@127.0.0.1:{closed}/x", (":***@",)),
        (
            "postgresql://postgres@127.0.0.1:5432/no_such_database_seatcast",
            ("cannot connect to PostgreSQL", "no_such_database_seatcast"),
        ),
        ("postgresql://postgres@127.0.0.1:99999/x", ("DATABASE_URL",)),
    ],
)
def test_bad_database_url_exits_2_with_one_line(url: str, needles: tuple[str, ...]) -> None:
    """A malformed or unusable DATABASE_URL stops the process at start: exit 2, one clear
    line on stderr, no traceback, no password."""
    url = url.replace("{closed}", str(free_port()))
    result = run_api({"DATABASE_URL": url, "JWT_SECRET": JWT_SECRET})
    assert_refused(result, *needles)
    assert "hunter2" not in result.stderr


@pytest.mark.parametrize(
    "secret", [None, "", "too-short", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"]
)
def test_missing_or_short_jwt_secret_exits_2(secret: str | None, database_url: str) -> None:
    """JWT_SECRET missing, empty, under 32 bytes or shaped like a key pyjwt refuses as an
    HMAC secret: exit 2 with a line naming JWT_SECRET."""
    env = {"DATABASE_URL": database_url}
    if secret is not None:
        env["JWT_SECRET"] = secret
    assert_refused(run_api(env), "JWT_SECRET")


async def test_concurrent_migrations_are_safe_and_idempotent(database_url: str) -> None:
    """Migrations applied by several starters at once run once; a later run applies nothing."""
    connections = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.gather(*(migrations.apply(c) for c in connections))
        versions = [m.version for m in migrations.available()]
        assert sorted(v for applied in results for v in applied) == versions
        assert await migrations.apply(connections[0]) == []
        recorded = await connections[0].fetch("SELECT version FROM schema_migrations")
        assert sorted(r["version"] for r in recorded) == versions
    finally:
        for connection in connections:
            await connection.close()


def test_two_processes_starting_together_share_one_schema(
    service: Callable[..., ServiceProcess], database_url: str, redis_url: str
) -> None:
    """Two API processes started at the same moment on a fresh database both become ready."""
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url}
    started: list[ServiceProcess] = []
    threads = [
        threading.Thread(target=lambda: started.append(service("booking_api", env)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(started) == 2
    for process in started:
        assert httpx.get(f"{process.http_url}/api/events").json() == []


def test_probes_follow_redis(api: ServiceProcess, redis_server: RedisServer) -> None:
    """/healthz is always 200; /readyz is 503 with the error body while Redis is down."""
    assert httpx.get(f"{api.http_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api.http_url}/readyz").json() == {"status": "ready"}
    redis_server.stop()
    down = wait_until(lambda: _status(api, "/readyz", 503), timeout=15, what="readyz 503")
    assert down is not None
    assert down.json()["error"]["code"] == "not_ready"
    assert httpx.get(f"{api.http_url}/healthz").status_code == 200
    redis_server.start()
    wait_until(lambda: _status(api, "/readyz", 200), timeout=15, what="readyz 200")


def _status(api: ServiceProcess, path: str, status: int) -> httpx.Response | None:
    response = httpx.get(api.http_url + path, timeout=5)
    return response if response.status_code == status else None


def test_metrics_count_requests_and_bookings(
    api: ServiceProcess, token: Callable[..., str]
) -> None:
    """/metrics reports requests by route template, bookings, backlog and publish failures."""
    event = httpx.post(
        f"{api.http_url}/api/events",
        json={"name": "M", "capacity": 3},
        headers=bearer(token(1, admin=True)),
    ).json()
    httpx.post(
        f"{api.http_url}/api/bookings", json={"eventId": event["id"]}, headers=bearer(token(2))
    )
    httpx.get(f"{api.http_url}/api/events/{event['id']}")
    text = httpx.get(f"{api.http_url}/metrics").text
    assert (
        'seatcast_api_requests_total{method="GET",route="/api/events/{eventId}",status="200"} 1.0'
    ) in text
    assert "seatcast_api_bookings_created_total 1.0" in text
    assert "seatcast_api_request_duration_seconds_bucket" in text
    assert "seatcast_api_outbox_backlog" in text
    assert "seatcast_api_publish_failures_total" in text


def test_tokens_never_reach_the_logs(api: ServiceProcess, token: Callable[..., str]) -> None:
    """Tokens sent in a query string or an Authorization header appear in no log line."""
    secret_tokens = [token(77), token(78, admin=True)]
    httpx.get(f"{api.http_url}/api/events?token={secret_tokens[0]}")
    httpx.get(
        f"{api.http_url}/api/bookings?access_token={secret_tokens[0]}",
        headers=bearer(secret_tokens[1]),
    )
    httpx.post(f"{api.http_url}/api/bookings", content=b"{", headers=bearer(secret_tokens[1]))
    api.stop()
    logs = api.logs()
    assert "/api/bookings?access_token=[redacted]" in logs
    for secret in secret_tokens:
        assert secret not in logs
        assert secret.split(".")[1] not in logs


def test_sigterm_stops_the_process_cleanly(api: ServiceProcess) -> None:
    """SIGTERM: the process runs its shutdown and ends within seconds (uvicorn re-raises
    the signal after a graceful shutdown, so the status is -SIGTERM)."""
    api.signal(signal.SIGTERM)
    assert api.wait(timeout=15) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in api.logs()


async def test_cors_preflight_allows_configured_origins(database_url: str, redis_url: str) -> None:
    """CORS_ORIGINS lets those pages send Authorization and Idempotency-Key; others get no
    CORS headers."""
    settings = settings_for(database_url, redis_url, CORS_ORIGINS="http://demo.example")
    async with running_app(settings) as client:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,idempotency-key",
        }
        allowed = await client.options(
            "/api/bookings", headers={"Origin": "http://demo.example", **preflight}
        )
        assert allowed.status_code == 200
        assert allowed.headers["access-control-allow-origin"] == "http://demo.example"
        allowed_headers = allowed.headers["access-control-allow-headers"].lower()
        assert {"authorization", "idempotency-key", "content-type"} <= {
            h.strip() for h in allowed_headers.split(",")
        }
        assert "DELETE" in allowed.headers["access-control-allow-methods"]
        refused = await client.options(
            "/api/bookings", headers={"Origin": "http://evil.example", **preflight}
        )
        assert refused.status_code == 400
        assert "access-control-allow-origin" not in refused.headers
        simple = await client.get("/api/events", headers={"Origin": "http://demo.example"})
        assert simple.headers["access-control-allow-origin"] == "http://demo.example"
