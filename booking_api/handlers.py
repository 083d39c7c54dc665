"""The endpoint handlers of contract section 3: parse, authorise, call the store, respond."""

from __future__ import annotations

import logging
import re
from typing import Any, cast

import asyncpg
import orjson
from starlette.requests import Request
from starlette.responses import Response

from booking_api import auth, idempotency, store
from booking_api.errors import (
    error_response,
    not_found,
)
from booking_api.idempotency import StoredResponse
from booking_api.readiness import not_ready_reason
from booking_api.request_body import read_json
from booking_api.responses import json_response, raw_json_response
from booking_api.schemas import (
    BIGINT_MAX,
    BOOKING_ID_PATTERN,
    NEW_BOOKING,
    NEW_EVENT,
)
from booking_api.services import services

logger = logging.getLogger("booking_api")

# What a lost or overloaded PostgreSQL raises: 503, not 500.
UNAVAILABLE_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # Server shutting down or crashed (57P01, 57P02) while the request ran.
    asyncpg.exceptions.OperatorInterventionError,
    # asyncpg's protocol state after the server cut a connection mid-query (asyncpg#1069).
    asyncpg.InternalClientError,
)

_EVENT_ID = re.compile(r"[1-9][0-9]{0,18}")
_BOOKING_ID = re.compile(BOOKING_ID_PATTERN)


def event_id_param(request: Request) -> int:
    """The path's event id; anything but a positive bigint names no event (404)."""
    text = request.path_params["eventId"]
    if not _EVENT_ID.fullmatch(text) or int(text) > BIGINT_MAX:
        raise not_found("event")
    return int(text)


def booking_id_param(request: Request) -> str:
    text = request.path_params["bookingId"]
    if not _BOOKING_ID.fullmatch(text):
        raise not_found("booking")
    return cast(str, text)


async def list_events(request: Request) -> Response:
    events = await store.list_events(services(request).pool)
    return json_response([e.as_json() for e in events])


async def get_event(request: Request) -> Response:
    event = await store.get_event(services(request).pool, event_id_param(request))
    return json_response(event.as_json())


async def create_event(request: Request) -> Response:
    s = services(request)
    auth.admin(request, s.verifier)
    values = NEW_EVENT.parse(await read_json(request))
    event = await store.create_event(s.pool, values["name"], values["capacity"])
    s.relay.event_created(event.id, event.capacity)
    logger.info("event created", extra={"eventId": event.id, "capacity": event.capacity})
    return json_response(event.as_json(), 201)


async def create_booking(request: Request) -> Response:
    s = services(request)
    claims = auth.caller(request, s.verifier)
    key = idempotency.key_of(request)
    values = NEW_BOOKING.parse(await read_json(request))

    async def book(db: Any) -> StoredResponse:
        booking = await store.book(db, values["eventId"], claims.user_id, values["seats"])
        return StoredResponse(201, orjson.dumps(booking.as_json()))

    if key is None:
        response, fresh = await book(s.pool), True
    else:
        fingerprint = idempotency.fingerprint(values)
        response, fresh = await idempotency.run_once(s.pool, claims.user_id, key, fingerprint, book)
    if fresh:
        s.metrics.bookings_created.inc()
        s.relay.kick(values["eventId"])
    return raw_json_response(response.body, response.status)


async def list_bookings(request: Request) -> Response:
    s = services(request)
    claims = auth.caller(request, s.verifier)
    bookings = await store.list_bookings(s.pool, claims.user_id)
    return json_response([b.as_json() for b in bookings])


async def get_booking(request: Request) -> Response:
    s = services(request)
    claims = auth.caller(request, s.verifier)
    booking = await store.get_booking(
        s.pool, booking_id_param(request), claims.user_id, claims.is_admin
    )
    return json_response(booking.as_json())


async def cancel_booking(request: Request) -> Response:
    s = services(request)
    claims = auth.caller(request, s.verifier)
    booking = await store.cancel(s.pool, booking_id_param(request), claims.user_id, claims.is_admin)
    s.metrics.bookings_cancelled.inc()
    s.relay.kick(booking.event_id)
    return json_response(booking.as_json())


async def healthz(request: Request) -> Response:
    return json_response({"status": "ok"})


async def readyz(request: Request) -> Response:
    s = services(request)
    reason = await not_ready_reason(s.pool, s.redis)
    if reason is not None:
        return error_response(503, "not_ready", reason)
    return json_response({"status": "ready"})


async def metrics(request: Request) -> Response:
    body = services(request).metrics.render()
    return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")


async def database_unavailable(request: Request, exc: Exception) -> Response:
    logger.warning("PostgreSQL unavailable: %r", exc)
    return error_response(503, "unavailable", "the database does not answer; retry later")
