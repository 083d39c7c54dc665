"""`Idempotency-Key` on `POST /api/bookings`: a repeat replays the first response.

The key row is inserted first, in the booking's transaction. A concurrent
repeat of the same key blocks on that insert until the first transaction
ends: after a commit it finds the stored response, after a rollback (the
booking failed and changed nothing) it books itself. Only successful
responses are stored, so a failed attempt may be retried with the same key.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from starlette.requests import Request

from booking_api.errors import invalid
from booking_api.schemas import IDEMPOTENCY_KEY_PATTERN

HEADER = "Idempotency-Key"
_VALID_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


def key_of(request: Request) -> str | None:
    """The request's key, None without one; 422 for an empty, long or non-printable one."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _VALID_KEY.fullmatch(key):
        raise invalid(f"{HEADER} must be 1 to 200 printable ASCII characters")
    return key


def fingerprint(values: dict[str, Any]) -> str:
    """What identifies a request, so a key reused for a different one is refused."""
    canonical = "&".join(f"{name}={values[name]}" for name in sorted(values))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def run_once(
    pool: asyncpg.Pool,
    user_id: int,
    key: str,
    request_hash: str,
    action: Callable[[Any], Awaitable[StoredResponse]],
) -> tuple[StoredResponse, bool]:
    """Run `action` once per (user, key); returns its response and whether it ran now."""
    async with pool.acquire() as db, db.transaction():
        claimed = await db.fetchval(
            "INSERT INTO idempotency_keys (user_id, key, request_hash) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING RETURNING true",
            user_id,
            key,
            request_hash,
        )
        if not claimed:
            return await _stored(db, user_id, key, request_hash), False
        response = await action(db)
        await db.execute(
            "UPDATE idempotency_keys SET status_code = $3, body = $4"
            " WHERE user_id = $1 AND key = $2",
            user_id,
            key,
            response.status,
            response.body,
        )
        return response, True


async def _stored(db: Any, user_id: int, key: str, request_hash: str) -> StoredResponse:
    row = await db.fetchrow(
        "SELECT request_hash, status_code, body FROM idempotency_keys"
        " WHERE user_id = $1 AND key = $2",
        user_id,
        key,
    )
    if row["request_hash"] != request_hash:
        raise invalid(f"this {HEADER} was already used for a different request")
    return StoredResponse(row["status_code"], bytes(row["body"]))
