"""Real PostgreSQL for tests: a fresh database per test, dropped afterwards.

The server is the one named by `SEATCAST_TEST_DATABASE_URL`, else the
machine's on 127.0.0.1:5432, else an embedded one (pgserver) started for the
session, so `make test` works where no PostgreSQL runs.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

LOCAL_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


async def _execute(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=5)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _reachable(url: str) -> bool:
    try:
        asyncio.run(_execute(url, "SELECT 1"))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


class PostgresServer:
    """Where test databases are made: an admin URL on a running server."""

    def __init__(self) -> None:
        # The embedded server (pgserver) when no PostgreSQL answered; None otherwise.
        self._embedded: Any = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        url = os.environ.get("SEATCAST_TEST_DATABASE_URL") or LOCAL_URL
        if not _reachable(url):
            url = self._start_embedded()
        self.admin_url = url

    def _start_embedded(self) -> str:
        import pgserver

        self._tmp = tempfile.TemporaryDirectory(prefix="seatcast-pg-")
        self._embedded = pgserver.get_server(  # type: ignore[attr-defined]
            Path(self._tmp.name), cleanup_mode="stop"
        )
        return str(self._embedded.get_uri())

    @contextmanager
    def database(self) -> Iterator[str]:
        """A new empty database for one test; yields its URL, drops it after."""
        name = f"seatcast_test_{uuid.uuid4().hex[:12]}"
        asyncio.run(_execute(self.admin_url, f'CREATE DATABASE "{name}"'))
        try:
            yield _with_database(self.admin_url, name)
        finally:
            asyncio.run(_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.cleanup()
        if self._tmp is not None:
            self._tmp.cleanup()
