"""Versioned SQL migrations, applied at start.

Files `migrations/NNN_name.sql` run in order, each in its own transaction,
and are recorded in `schema_migrations`. A session-level advisory lock makes
replicas that start together take turns: the second finds everything applied.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib import resources

import asyncpg

logger = logging.getLogger("booking_api.migrations")

# Any constant shared by every replica; "seatcast" in ASCII.
ADVISORY_LOCK_ID = 0x7365617463617374


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def available() -> list[Migration]:
    """Every migration shipped with the package, in version order."""
    found = []
    for entry in resources.files("booking_api").joinpath("migrations").iterdir():
        if entry.name.endswith(".sql"):
            version, _, rest = entry.name.partition("_")
            found.append(Migration(int(version), rest.removesuffix(".sql"), entry.read_text()))
    return sorted(found, key=lambda m: m.version)


async def apply(connection: asyncpg.Connection) -> list[int]:
    """Apply what is missing; return the versions applied now."""
    await connection.execute("SELECT pg_advisory_lock($1)", ADVISORY_LOCK_ID)
    try:
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            r["version"] for r in await connection.fetch("SELECT version FROM schema_migrations")
        }
        applied = []
        for migration in available():
            if migration.version not in done:
                await _apply_one(connection, migration)
                applied.append(migration.version)
        return applied
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", ADVISORY_LOCK_ID)


async def _apply_one(connection: asyncpg.Connection, migration: Migration) -> None:
    async with connection.transaction():
        await connection.execute(migration.sql)
        await connection.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            migration.version,
            migration.name,
        )
    logger.info("applied migration %03d_%s", migration.version, migration.name)
