"""The operations the API serves: each a documented `Operation` and its handler.

The same table builds Starlette's routes and the OpenAPI document.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from booking_api import handlers
from booking_api.openapi import Operation, document
from booking_api.responses import raw_json_response
from booking_api.schemas import (
    BIGINT_MAX,
    BOOKING,
    BOOKING_ID_PATTERN,
    EVENT,
    IDEMPOTENCY_KEY_PATTERN,
    NEW_BOOKING,
    NEW_EVENT,
    STATUS,
    Field,
)

EVENT_ID = Field("eventId", "integer", "The event id.", minimum=1, maximum=BIGINT_MAX)
BOOKING_ID = Field(
    "bookingId", "string", "The booking id, e.g. BK-7f3a9c.", pattern=BOOKING_ID_PATTERN
)
IDEMPOTENCY_KEY = Field(
    "Idempotency-Key",
    "string",
    "Repeat a booking safely: the same key from the same user "
    "returns the first response again and books nothing more.",
    required=False,
    min_length=1,
    max_length=200,
    pattern=IDEMPOTENCY_KEY_PATTERN,
)

Handler = Callable[[Request], Awaitable[Response]]

OPERATIONS: list[tuple[Operation, Handler]] = [
    (
        Operation(
            "GET",
            "/api/events",
            "listEvents",
            "List every event.",
            "anyone",
            200,
            "Every event, oldest first.",
            EVENT,
            response_is_list=True,
            errors=(503,),
        ),
        handlers.list_events,
    ),
    (
        Operation(
            "GET",
            "/api/events/{eventId}",
            "getEvent",
            "One event.",
            "anyone",
            200,
            "The event.",
            EVENT,
            path_params=(EVENT_ID,),
            errors=(503,),
        ),
        handlers.get_event,
    ),
    (
        Operation(
            "POST",
            "/api/events",
            "createEvent",
            "Create an event (admin).",
            "admin",
            201,
            "The new event, seq 0.",
            EVENT,
            request=NEW_EVENT,
            errors=(503,),
        ),
        handlers.create_event,
    ),
    (
        Operation(
            "POST",
            "/api/bookings",
            "createBooking",
            "Book seats for the caller.",
            "user",
            201,
            "The booking.",
            BOOKING,
            request=NEW_BOOKING,
            headers=(IDEMPOTENCY_KEY,),
            errors=(404, 409, 503),
        ),
        handlers.create_booking,
    ),
    (
        Operation(
            "GET",
            "/api/bookings",
            "listBookings",
            "The caller's bookings.",
            "user",
            200,
            "The caller's bookings, oldest first.",
            BOOKING,
            response_is_list=True,
            errors=(503,),
        ),
        handlers.list_bookings,
    ),
    (
        Operation(
            "GET",
            "/api/bookings/{bookingId}",
            "getBooking",
            "One booking (owner or admin).",
            "user",
            200,
            "The booking.",
            BOOKING,
            path_params=(BOOKING_ID,),
            errors=(503,),
        ),
        handlers.get_booking,
    ),
    (
        Operation(
            "DELETE",
            "/api/bookings/{bookingId}",
            "cancelBooking",
            "Cancel a booking (owner or admin).",
            "user",
            200,
            "The booking, status cancelled.",
            BOOKING,
            path_params=(BOOKING_ID,),
            errors=(409, 503),
        ),
        handlers.cancel_booking,
    ),
    (
        Operation(
            "GET", "/healthz", "healthz", "Liveness.", "anyone", 200, "The process runs.", STATUS
        ),
        handlers.healthz,
    ),
    (
        Operation(
            "GET",
            "/readyz",
            "readyz",
            "Readiness.",
            "anyone",
            200,
            "PostgreSQL and Redis answer.",
            STATUS,
            errors=(503,),
        ),
        handlers.readyz,
    ),
    (
        Operation(
            "GET",
            "/metrics",
            "metrics",
            "Prometheus metrics.",
            "anyone",
            200,
            "Prometheus text format.",
            response_media_type="text/plain",
        ),
        handlers.metrics,
    ),
]


def openapi_document() -> dict[str, Any]:
    operations = [op for op, _ in OPERATIONS]
    operations.append(
        Operation(
            "GET",
            "/openapi.json",
            "openapi",
            "This document.",
            "anyone",
            200,
            "The OpenAPI 3 document.",
        )
    )
    return document(operations)


def routes() -> list[Route]:
    by_path: dict[str, list[tuple[str, Handler]]] = {}
    for op, handler in OPERATIONS:
        by_path.setdefault(op.path, []).append((op.method, handler))
    openapi_body = orjson.dumps(openapi_document())

    async def openapi(request: Request) -> Response:
        return raw_json_response(openapi_body, 200)

    found = [
        Route(path, _dispatch(dict(methods)), methods=[m for m, _ in methods])
        for path, methods in by_path.items()
    ]
    return [*found, Route("/openapi.json", openapi, methods=["GET"])]


def _dispatch(by_method_name: dict[str, Handler]) -> Handler:
    """One endpoint for a path that serves several methods (Starlette routes by path)."""
    if len(by_method_name) == 1:
        return next(iter(by_method_name.values()))

    async def by_method(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await by_method_name[method](request)

    return by_method
