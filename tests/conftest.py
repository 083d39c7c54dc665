"""Fixtures every test shares: real Redis, real PostgreSQL, tokens, service processes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Generator, Iterator

import httpx
import pytest
import redis.asyncio as aioredis

from shared.tokens import mint_token
from tests.support.api_client import running_app, settings_for
from tests.support.binaries import MISSING, under_ci
from tests.support.gateway import StartGateway, gateways
from tests.support.postgres import PostgresServer
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

JWT_SECRET = "test-secret-that-is-long-enough-for-hs256!"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true", help="run the long soak and fault variants")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Under CI=true a test skipped for a missing binary (tests/support/binaries.py) fails."""
    report = yield
    if report.skipped and under_ci() and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if MISSING in reason:
            report.outcome = "failed"
            missing = reason.removeprefix("Skipped: ")
            report.longrepr = f"{missing}: a failure under CI=true (.ci/run installs it)"
    return report


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def database_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database on a real PostgreSQL server."""
    with postgres_server.database() as url:
        yield url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private real Redis server for this test, restartable on the same port."""
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client of this test's private Redis."""
    client = aioredis.Redis(port=redis_server.port)
    yield client
    await client.aclose()


@pytest.fixture
async def client(database_url: str, redis_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an in-process booking API (lifespan run) on real PostgreSQL and Redis."""
    async with running_app(settings_for(database_url, redis_url)) as client:
        yield client


@pytest.fixture
async def serve_gateway(redis_url: str, jwt_secret: str) -> AsyncIterator[StartGateway]:
    """Serve gateway replicas in this test's loop: `await serve_gateway(PING_INTERVAL_SECONDS="1")`.

    Each is a real replica under uvicorn on its own free port and this test's
    Redis (tests/support/gateway.py); all of them stop after the test.
    """
    async with gateways(redis_url, jwt_secret) as start:
        yield start


@pytest.fixture
def jwt_secret() -> str:
    return JWT_SECRET


@pytest.fixture
def token() -> Callable[..., str]:
    """Mint a token: `token(10)`, `token(1, admin=True)`, `token(5, ttl_seconds=1)`."""

    def make(user_id: int, *, admin: bool = False, ttl_seconds: int | None = 3600) -> str:
        return mint_token(JWT_SECRET, user_id, admin=admin, ttl_seconds=ttl_seconds)

    return make


@pytest.fixture
def service() -> Iterator[Callable[..., ServiceProcess]]:
    """Start real service processes; every one is stopped after the test."""
    started: list[ServiceProcess] = []

    def start(module: str, env: dict[str, str], *, ready_path: str = "/readyz") -> ServiceProcess:
        process = ServiceProcess(module, {"JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "info", **env})
        started.append(process)
        return process.start(ready_path=ready_path)

    yield start
    for process in started:
        process.close()


@pytest.fixture
def api(
    service: Callable[..., ServiceProcess], database_url: str, redis_url: str
) -> ServiceProcess:
    """A real `python -m booking_api` on its own database and Redis."""
    return service("booking_api", {"DATABASE_URL": database_url, "REDIS_URL": redis_url})
