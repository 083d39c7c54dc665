"""`python -m booking_api`: check settings and PostgreSQL, migrate, then serve."""

from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlsplit

import asyncpg
import uvicorn
import uvloop
from starlette.applications import Starlette

from booking_api import migrations
from booking_api.app import create_app
from shared import logs
from shared.quiet_server import QuietServer
from shared.settings import ApiSettings, api_settings, fail, load_or_exit

CONNECT_TIMEOUT_SECONDS = 5.0
# Unreachable, refused, malformed URL, bad password, no such database, timeout.
CONNECT_ERRORS = (OSError, TimeoutError, ValueError, asyncpg.PostgresError, asyncpg.InterfaceError)

logger = logging.getLogger("booking_api")


def without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


async def prepare_database(url: str) -> str | None:
    """Connect and apply migrations; a one-line reason when PostgreSQL cannot be used."""
    try:
        connection = await asyncpg.connect(url, timeout=CONNECT_TIMEOUT_SECONDS)
    except CONNECT_ERRORS as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return f"cannot connect to PostgreSQL at {without_password(url)}: {reason}"
    try:
        await migrations.apply(connection)
    finally:
        await connection.close()
    return None


async def serve(settings: ApiSettings, app: Starlette) -> None:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=logs.uvicorn_log_config(settings.log_level),
        proxy_headers=False,
        access_log=True,
        server_header=False,
        lifespan="on",
    )
    await QuietServer(config).serve()


def main() -> None:
    settings = load_or_exit(api_settings, "booking_api")
    logs.configure(settings.log_level)
    try:
        app = create_app(settings)
    except ValueError as error:  # a JWT key that cannot verify tokens; the text names it
        fail(str(error))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        problem = runner.run(prepare_database(settings.database_url))
        if problem is not None:
            fail(problem)
        logger.info("serving", extra={"host": settings.host, "port": settings.port})
        runner.run(serve(settings, app))


if __name__ == "__main__":
    main()
