"""A booking API and gateway replicas on a private Redis and database, for a module's tests.

Function-scoped tests use the `service` fixture; this is for a module whose
tests only book on events of their own and stop nothing, so they can share
one set of processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tests.conftest import JWT_SECRET
from tests.support.postgres import PostgresServer
from tests.support.processes import ServiceProcess
from tests.support.redis_server import RedisServer

# The tests' booking load is unthrottled (about 400 changes a second): the history
# stream must outlast a Redis restart's backlog for "nothing lost" to hold (README:
# History must cover an outage).
OUTAGE_HISTORY_SIZE = "100000"


@dataclass
class Services:
    api: ServiceProcess
    gateways: list[ServiceProcess]


def start_services(
    database_url: str,
    redis_url: str,
    started: list[ServiceProcess],
    gateway_envs: Sequence[Mapping[str, str]] = ({},),
) -> Services:
    """Gateways (one per env), then an API whose CORS_ORIGINS lists their pages' origins."""

    def start(module: str, env: Mapping[str, str]) -> ServiceProcess:
        base = {"JWT_SECRET": JWT_SECRET, "LOG_LEVEL": "info", "REDIS_URL": redis_url}
        process = ServiceProcess(module, {**base, **env})
        started.append(process)
        return process.start()

    gateways = [start("gateway", env) for env in gateway_envs]
    origins = ",".join(g.http_url for g in gateways)
    api = start(
        "booking_api",
        {
            "DATABASE_URL": database_url,
            "CORS_ORIGINS": origins,
            "HISTORY_SIZE": OUTAGE_HISTORY_SIZE,
        },
    )
    return Services(api, gateways)


@contextmanager
def shared_services(
    postgres_server: PostgresServer, gateway_envs: Sequence[Mapping[str, str]] = ({},)
) -> Iterator[Services]:
    """Start a private Redis, a database and the services; stop and drop all of it after."""
    started: list[ServiceProcess] = []
    redis = RedisServer()
    redis.start()
    try:
        with postgres_server.database() as database_url:
            try:
                yield start_services(database_url, redis.url, started, gateway_envs)
            finally:
                for process in started:
                    process.close()
    finally:
        redis.close()
